"""``optimum-int8 quantize`` (tuned or not) and ``optimum-int8 evaluate``.

Both run under ``torchrun`` / ``accelerate launch`` as they are: they join the process group the
launcher describes (gloo), shard the evaluation over the ranks, and print, write and save on rank 0 only.
"""

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from .. import saving
from ..cli import add_debug_argument
from ..configuration import DEFAULT_SCHEME
from ..evaluation import distributed
from ..schemes import SCHEMES
from ..tasks import TASK_ALIASES, TASK_METRICS, TASKS
from .config import FALLBACK_DTYPE_CHOICES

# The best model found was saved, but it misses the tolerance (a warning and the manifest say so too).
TOLERANCE_MISSED_EXIT_CODE = 3


def _columns(pairs: list[str]) -> dict[str, str]:
    columns = {}
    for pair in pairs:
        role, sep, name = pair.partition("=")
        if not sep or not role or not name:
            raise ValueError(f"--column expects ROLE=NAME (e.g. text=sentence), got {pair!r}")
        columns[role] = name
    return columns


def _add_data_arguments(parser: argparse.ArgumentParser, dataset_required: bool) -> None:
    evaluated = sorted(set(TASK_METRICS) | {alias for alias, task in TASK_ALIASES.items() if task in TASK_METRICS})
    # Every task a loader supports quantizes; only evaluation (and so tuning) needs one with a built-in metric.
    tasks = evaluated if dataset_required else sorted(set(TASKS) | set(TASK_ALIASES))
    parser.add_argument("model_dir", type=Path, help="model directory (fp32 for quantize; any for evaluate)")
    parser.add_argument("--task", choices=tasks, required=dataset_required,
                        help="the model's task: its head, and the built-in evaluation run with --dataset")
    parser.add_argument("--dataset", type=Path, required=dataset_required,
                        help="evaluation data: a .json/.jsonl/.csv/.tsv/.parquet file")
    parser.add_argument("--metric", help="built-in metric of the task (default: the task's first, e.g. rougeLsum, accuracy, perplexity)")
    parser.add_argument("--column", action="append", default=[], metavar="ROLE=NAME",
                        help="dataset column for a role (e.g. text=sentence, label=sentiment); others are inferred")
    parser.add_argument("--max-eval-samples", type=int, help="evaluate on the first N rows only")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512, help="tokenizer truncation length")
    parser.add_argument("--max-new-tokens", type=int, help="generation override for seq2seq tasks")
    parser.add_argument("--num-beams", type=int, help="generation override for seq2seq tasks")
    add_debug_argument(parser)


def _check_inputs(args) -> None:
    """Fail in one line, before loading anything, on paths that cannot work."""
    if not args.model_dir.exists():
        raise FileNotFoundError(f"model directory {args.model_dir} does not exist.")
    if not args.model_dir.is_dir() or not (args.model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{args.model_dir} is not a model directory: it has no config.json.")
    for what, path in (("dataset", args.dataset), ("calibration dataset", getattr(args, "calibration_dataset", None))):
        if path is not None and not path.is_file():
            raise FileNotFoundError(f"{what} file {path} does not exist" + (" (it is a directory)." if path.exists() else "."))


def _generation_kwargs(args) -> dict:
    return {key: value for key, value in (("max_new_tokens", args.max_new_tokens), ("num_beams", args.num_beams)) if value is not None}


QUANTIZE_HELP = "quantize a model to int8, tuned to a metric tolerance when --dataset is given"
QUANTIZE_DESCRIPTION = (
    "Dynamic int8 quantization. With --dataset, accuracy-aware tuning keeps the fewest most sensitive Linear "
    "modules in float that bring the metric within --tolerable-loss of fp32."
)
EVALUATE_HELP = "evaluate a model (int8 or fp32) with a task's built-in metrics"


def _alpha(text: str):
    """``--smoothquant-alpha``: a number in [0, 1] or ``auto``."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1] or 'auto', got {text!r}") from None


def add_quantize_arguments(parser: argparse.ArgumentParser) -> None:
    _add_data_arguments(parser, dataset_required=False)
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="directory to write the int8 model to: new, empty, or an optimum-int8 checkpoint to replace")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the output even if it is the model being quantized or holds another model")
    parser.add_argument("--tolerable-loss", type=float, default=0.01)
    parser.add_argument("--absolute", action="store_true", help="tolerance in metric units instead of relative")
    parser.add_argument("--max-trials", type=int, help="most int8 evaluations (default: ceil(log2(#Linear)) + 3)")
    parser.add_argument("--timeout", type=float, help="seconds for the whole tuning, checked between trials")
    parser.add_argument("--fallback-dtype", choices=FALLBACK_DTYPE_CHOICES, default="auto",
                        help="how tuning repairs the most sensitive modules: float32/bfloat16 fallbacks, or weight-only int8")
    parser.add_argument("--scheme", choices=[n for n, s in SCHEMES.items() if s.module_class is not None],
                        default=DEFAULT_SCHEME, help="quantization scheme (docs/schemes.md)")
    parser.add_argument("--smoothquant-alpha", type=_alpha, metavar="ALPHA|auto",
                        help="SmoothQuant migration strength in [0, 1] or 'auto' (per-token and static schemes)")
    parser.add_argument("--observer", choices=["minmax", "histogram"], help="static scheme: how activation ranges are set")
    parser.add_argument("--calibration-dataset", type=Path,
                        help="rows to calibrate static scales / SmoothQuant on, and to rank module sensitivity "
                             "(json/jsonl/csv/tsv/parquet, columns as for --dataset; default for ranking: --dataset)")
    parser.add_argument("--calibration-samples", type=int, default=8,
                        help="rows of the calibration data used (calibration and sensitivity ranking)")
    parser.add_argument("--modules-in-fp32", nargs="*", default=[], metavar="NAME", help="always keep these in fp32")
    parser.add_argument("--modules-in-bf16", nargs="*", default=[], metavar="NAME", help="always keep these in bf16")
    parser.add_argument("--verbose", action="store_true", help="show neural-compressor's logs")


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    _add_data_arguments(parser, dataset_required=True)
    parser.add_argument("--json", type=Path, metavar="FILE",
                        help="also write {task, metric, value, samples, model, dataset, metrics} to FILE")


def add_command(subparsers) -> None:
    quantize = subparsers.add_parser("quantize", help=QUANTIZE_HELP, description=QUANTIZE_DESCRIPTION)
    add_quantize_arguments(quantize)
    quantize.set_defaults(run=run_quantize)
    evaluate = subparsers.add_parser("evaluate", help=EVALUATE_HELP)
    add_evaluate_arguments(evaluate)
    evaluate.set_defaults(run=run_evaluate)


def run_quantize(args) -> int:
    with distributed.process_group_from_environment():
        return _quantize(args)


def _quantize(args) -> int:
    from ..configuration import Int8Config
    from .config import TuningConfig
    from .quantizer import INCQuantizer

    if args.dataset is not None and args.task is None:
        raise ValueError("--dataset needs --task (which built-in evaluation to run).")
    if args.dataset is not None and args.task not in TASK_METRICS and TASK_ALIASES.get(args.task) not in TASK_METRICS:
        raise ValueError(f"--task {args.task} has no built-in evaluation, so it cannot tune on --dataset; drop --dataset "
                         f"to quantize without tuning, or use one of {sorted(TASK_METRICS)}.")
    _check_inputs(args)
    output = Path(os.path.realpath(args.output))
    saving.check_target(output, sources=[args.model_dir], overwrite=args.overwrite)
    quantizer = INCQuantizer.from_pretrained(args.model_dir, task=args.task)
    tuning = None
    if args.dataset is not None:
        tuning = TuningConfig(
            metric=args.metric, tolerable_loss=args.tolerable_loss, tolerance_mode="absolute" if args.absolute else "relative",
            max_trials=args.max_trials, timeout=args.timeout, fallback_dtype=args.fallback_dtype,
            calibration_samples=args.calibration_samples, verbose=args.verbose,
        )
    config = Int8Config(modules_in_fp32=args.modules_in_fp32, modules_in_bf16=args.modules_in_bf16, scheme=args.scheme,
                        smoothquant_alpha=args.smoothquant_alpha, observer=args.observer)
    if config.needs_calibration_data and args.calibration_dataset is None:
        raise ValueError(f"--scheme {args.scheme}" + (f" --smoothquant-alpha {args.smoothquant_alpha}" if args.smoothquant_alpha is not None else "")
                         + " calibrates activations: give --calibration-dataset (and --task to tokenize it).")
    if args.calibration_dataset is not None and args.task is None:
        raise ValueError("--calibration-dataset needs --task (how to tokenize its rows).")
    qmodel = quantizer.quantize(
        config, tuning=tuning,
        eval_dataset=str(args.dataset) if args.dataset else None, save_directory=args.output, overwrite=args.overwrite,
        calibration_dataset=str(args.calibration_dataset) if args.calibration_dataset else None,
        calibration_samples=args.calibration_samples,
        columns=_columns(args.column),
        batch_size=args.batch_size, max_length=args.max_length, max_eval_samples=args.max_eval_samples,
        generation_kwargs=_generation_kwargs(args),
    )
    manifest = qmodel.config.quantization_config.manifest
    code = 0 if manifest.tuning is None or manifest.tuning.tolerance_met else TOLERANCE_MISSED_EXIT_CODE
    if not distributed.is_main_process():
        return code
    print(f"int8 modules: {len(manifest.int8_modules)}, kept in float: {len(manifest.fallback_modules)}")
    if manifest.tuning is not None:
        record = manifest.tuning
        print(f"{record.metric}: fp32 {record.fp32_value:.6g}, int8 {record.int8_value:.6g} "
              f"({record.tolerance_mode} tolerance {record.tolerance}, met: {record.tolerance_met}); "
              f"{record.evaluations} evaluations ({record.trials} int8 trials), stopped: {record.stop_reason}")
    print(f"saved to {args.output}")
    return code


def run_evaluate(args) -> int:
    with distributed.process_group_from_environment():
        return _evaluate(args)


def _evaluate(args) -> int:
    from ..evaluation import TaskEvaluator
    from ..modeling import TASK_LOADERS
    from .quantizer import load_tokenizer

    if args.json is not None and not args.json.parent.is_dir():
        raise FileNotFoundError(f"--json {args.json}: the directory {args.json.parent} does not exist.")
    _check_inputs(args)
    evaluator = TaskEvaluator(
        args.task, str(args.dataset), load_tokenizer(args.model_dir), metric=args.metric,
        columns=_columns(args.column), batch_size=args.batch_size, max_length=args.max_length,
        max_samples=args.max_eval_samples, generation_kwargs=_generation_kwargs(args),
    )
    with warnings.catch_warnings():  # evaluating an fp32 model is as meant as an int8 one
        warnings.filterwarnings("ignore", message=".*is not an optimum-int8 checkpoint")
        model = TASK_LOADERS[evaluator.task].from_pretrained(args.model_dir).eval()  # ours, fp32 or legacy INC
    metrics = evaluator.evaluate(model)
    distributed.on_main_process(lambda: _report(args, evaluator, metrics), what="writing the evaluation results")
    return 0


def evaluation_record(args, evaluator, metrics: dict[str, float]) -> dict:
    """What ``evaluate --json FILE`` writes: the same from one process or many."""
    return {
        "task": evaluator.task,
        "metric": evaluator.metric_name,
        "value": metrics[evaluator.metric_name],
        "samples": evaluator.num_samples,
        "model": str(args.model_dir),
        "dataset": str(args.dataset),
        "metrics": metrics,
    }


def _report(args, evaluator, metrics: dict[str, float]) -> None:
    json.dump(metrics, sys.stdout, indent=2)
    print()
    if args.json is not None:
        args.json.write_text(json.dumps(evaluation_record(args, evaluator, metrics), indent=2) + "\n")
