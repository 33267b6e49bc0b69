"""Each quantization scheme on a real BERT (all-MiniLM-L6-v2): sentence embeddings vs fp32, and speed. Offline.

    python examples/schemes_minilm.py --sentences 512

Embeds Rotten Tomatoes snippets (the vaderSentiment sdist from the package registry, as
tune_minilm_sentiment.py fetches it) with mean pooling, as sentence-transformers does, and prints the mean and
minimum cosine similarity of each scheme's embeddings to fp32's, sentences per second and the first call's time
(a compile, for the model run under ``torch.compile``), with the CPU's flags.
The sentences compared are the *last* ones of the file, which no example tunes on; the static and SmoothQuant
variants calibrate on the first ``--calibration-sentences`` (docs/schemes.md).
"""

import argparse
import copy
import time
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer

from kernel_accuracy_minilm import embed
from optimum_int8 import Int8Config, quantize_model
from optimum_int8.nn import kernels
from tune_minilm_sentiment import minilm_dir, movie_sentences

VARIANTS = {
    "int8_dynamic (per tensor)": Int8Config(scheme="int8_dynamic"),
    "int8_per_token": Int8Config(scheme="int8_per_token"),
    "int8_per_token + SmoothQuant 0.5": Int8Config(scheme="int8_per_token", smoothquant_alpha=0.5),
    "int8_static (minmax)": Int8Config(scheme="int8_static"),
    "int8_static + SmoothQuant 0.5 (histogram)": Int8Config(scheme="int8_static", smoothquant_alpha=0.5, observer="histogram"),
    "int8_weight_only": Int8Config(scheme="int8_weight_only"),
    "default Int8Config()": Int8Config(),
}
# Also run under torch.compile, which fuses its activation quantization into the ops before it (docs/kernels.md).
COMPILED = "int8_static + SmoothQuant 0.5 (histogram)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=512)
    parser.add_argument("--calibration-sentences", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path("minilm-schemes"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    texts = [text for text, _ in movie_sentences(args.workdir)]
    sentences, calibration_texts = texts[-args.sentences:], texts[: args.calibration_sentences]
    model_dir = minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    fp32 = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    calibration = [dict(tokenizer(calibration_texts[i:i + args.batch_size], padding=True, truncation=True,
                                  return_tensors="pt")) for i in range(0, len(calibration_texts), args.batch_size)]
    models = {"fp32": fp32, "torch bf16": copy.deepcopy(fp32).to(torch.bfloat16)}
    for name, config in VARIANTS.items():
        data = calibration if config.needs_calibration_data else None
        models[name] = quantize_model(copy.deepcopy(fp32), config, calibration_data=data)
    models[f"{COMPILED}, torch.compile"] = copy.deepcopy(models[COMPILED])
    models[f"{COMPILED}, torch.compile"].compile(dynamic=True)  # one graph for every batch size and length
    reference = embed(fp32, tokenizer, sentences, args.batch_size)
    print(f"all-MiniLM-L6-v2, {len(sentences)} sentences, batches of {args.batch_size}, {args.threads} threads; "
          f"CPU flags: {', '.join(kernels.capabilities.detect().flags())}")
    print("| model | mean cosine to fp32 | min cosine | sentences/s | vs fp32 | first call (s) |\n"
          "|---|---|---|---|---|---|")
    fp32_rate = None
    for name, model in models.items():
        start = time.perf_counter()
        embed(model, tokenizer, sentences[: args.batch_size], args.batch_size)  # warm-up
        first_call = time.perf_counter() - start
        start = time.perf_counter()
        embeddings = embed(model, tokenizer, sentences, args.batch_size)
        rate = len(sentences) / (time.perf_counter() - start)
        fp32_rate = fp32_rate or rate
        cosine = torch.nn.functional.cosine_similarity(embeddings, reference)
        print(f"| {name} | {cosine.mean():.5f} | {cosine.min():.5f} | {rate:.0f} | {rate / fp32_rate:.2f}x | "
              f"{first_call:.1f} |")


if __name__ == "__main__":
    main()
