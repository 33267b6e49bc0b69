"""The default path of an integer-only (ibert) model: load it, call it; every shape runs at full speed at once.

    python examples/ibert_default_path.py --workdir ibert-default [--preset bert-base]

Builds the benchmark's RoBERTa-base-shaped (or BERT-base-shaped) classifier with random seeded weights (no
download), quantizes it with ``Int8Config(scheme="ibert")`` on random token batches, saves and reloads it, then
times calls of several batch sizes and sequence lengths as a user would make them: the first call of the
process loads the native integer kernels (``optimum_int8/ibert/compilation.py``; on a machine that never ran them it
builds them first, a second or two), and no shape compiles anything. Every output is compared with the same model run
eagerly (``compile_integer_layers(model, enabled=False)``): bit-identical.
"""

import argparse
import time
import warnings
from pathlib import Path

import torch

from optimum_int8 import INCModelForSequenceClassification, Int8Config, quantize_model
from optimum_int8.benchmark import PRESETS
from optimum_int8.benchmark.workloads import random_token_ids
from optimum_int8.ibert import compilation, compile_integer_layers

SHAPES = [(8, 128), (1, 128), (8, 384), (1, 384), (4, 77)]


def build(preset: str, directory: Path) -> None:
    if (directory / "config.json").is_file():
        return
    torch.manual_seed(0)
    model = PRESETS[preset].build().eval()
    generator = torch.Generator().manual_seed(1234)
    calibration = [random_token_ids(model.config, 2, 128, generator) for _ in range(2)]
    quantize_model(model, Int8Config(scheme="ibert"), calibration_data=calibration)
    model.save_pretrained(directory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("ibert-default"))
    parser.add_argument("--preset", default="roberta-base", choices=["roberta-base", "bert-base"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", FutureWarning)
    directory = args.workdir / f"{args.preset}-ibert"
    build(args.preset, directory)

    model = INCModelForSequenceClassification.from_pretrained(directory)
    generator = torch.Generator().manual_seed(0)
    inputs = [random_token_ids(model.config, batch, length, generator) for batch, length in SHAPES]
    print(f"{args.preset}, {args.threads} threads; seconds per call (the first call of the process loads the kernels)")
    print("| shape | first call | second call | eager | bit-identical to eager |")
    print("|---|---|---|---|---|")
    with torch.inference_mode():
        for (batch, length), batch_inputs in zip(SHAPES, inputs):
            timings, outputs = [], []
            for _ in range(2):
                start = time.perf_counter()
                outputs.append(model(**batch_inputs).logits)
                timings.append(time.perf_counter() - start)
            compile_integer_layers(model, enabled=False)
            start = time.perf_counter()
            eager = model(**batch_inputs).logits
            eager_seconds = time.perf_counter() - start
            compile_integer_layers(model, enabled=True)
            same = all(torch.equal(output, eager) for output in outputs)
            print(f"| {batch}x{length} | {timings[0]:.2f} | {timings[1]:.3f} | {eager_seconds:.3f} | {same} |")
    statistics = compilation.load_statistics()
    print(f"native integer kernels: {statistics['kernels']}, loaded (built where missing) in {statistics['seconds']:.2f} s")


if __name__ == "__main__":
    main()
