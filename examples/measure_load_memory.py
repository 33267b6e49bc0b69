"""Measure peak resident memory while loading an int8 checkpoint, in a fresh process.

    python examples/measure_load_memory.py --preset bart-large --workdir int8-memory

Builds a model with BART-large-CNN shapes and random weights (seeded), saves it in fp32 and, quantized,
in the optimum-int8 format (once; reused afterwards), then for each measurement starts a fresh Python
process that imports the libraries, records its resident memory (the baseline), resets the kernel's
peak counter and loads the model. It prints the peak above the baseline next to the checkpoint size.
Linux only (reads /proc/self/status).
"""

import argparse
from pathlib import Path

from optimum_int8.benchmark.load_memory import measure_in_fresh_process

PRESETS = {
    "bart-large": dict(vocab_size=50265, d_model=1024, encoder_layers=12, decoder_layers=12,
                       encoder_attention_heads=16, decoder_attention_heads=16, encoder_ffn_dim=4096,
                       decoder_ffn_dim=4096, max_position_embeddings=1024),
    "tiny": dict(vocab_size=1000, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                 decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=128),
}

def build_checkpoints(preset: str, workdir: Path) -> tuple[Path, Path]:
    import torch
    from transformers import AutoModelForSeq2SeqLM, BartConfig, BartForConditionalGeneration

    from optimum_int8 import quantize_model

    fp32_dir, int8_dir = workdir / f"{preset}-fp32", workdir / f"{preset}-int8"
    if not (fp32_dir / "config.json").exists():
        torch.manual_seed(0)
        BartForConditionalGeneration(BartConfig(**PRESETS[preset])).save_pretrained(fp32_dir)
    if not (int8_dir / "config.json").exists():
        quantize_model(AutoModelForSeq2SeqLM.from_pretrained(fp32_dir)).save_pretrained(int8_dir)
    return fp32_dir, int8_dir


def checkpoint_bytes(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.glob("*.safetensors"))


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="bart-large")
    parser.add_argument("--workdir", type=Path, default=Path("int8-memory"))
    args = parser.parse_args(argv)
    fp32_dir, int8_dir = build_checkpoints(args.preset, args.workdir)
    int8_size = checkpoint_bytes(int8_dir)
    rows = [
        ("load int8 checkpoint", int8_dir, "optimum_int8.benchmark.variants:load_int8", int8_size),
        ("quantize fp32 while loading", fp32_dir, "optimum_int8.benchmark.variants:quantize_while_loading", int8_size),
    ]
    mib = 1024 * 1024
    print(f"preset {args.preset}: fp32 checkpoint {checkpoint_bytes(fp32_dir) / mib:.0f} MiB, "
          f"int8 checkpoint {int8_size / mib:.0f} MiB")
    print(f"| {'what':<28} | peak above baseline | int8 checkpoint | ratio |")
    print(f"|{'-' * 30}|{'-' * 21}|{'-' * 17}|{'-' * 7}|")
    results = []
    for label, directory, loader, reference in rows:
        peak = measure_in_fresh_process(loader, directory).peak_above_baseline
        results.append({"what": label, "peak_bytes": peak, "checkpoint_bytes": reference, "ratio": peak / reference})
        print(f"| {label:<28} | {peak / mib:>15.0f} MiB | {reference / mib:>11.0f} MiB | {peak / reference:.2f}x |")
    return results


if __name__ == "__main__":
    main()
