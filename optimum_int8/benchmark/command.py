"""``optimum-int8 benchmark``: the command-line front of ``run_benchmark``."""

import json
from pathlib import Path

from .presets import PRESETS
from .report import print_report, write_json, write_plot
from .runner import BenchmarkSettings, read_module_list, run_benchmark
from .variants import VARIANTS
from .workloads import WORKLOADS


def _sizes(entries: list[str]) -> dict:
    """``greedy.new_tokens=64`` -> {"greedy": {"new_tokens": 64}}."""
    sizes = {}
    for entry in entries:
        key, _, value = entry.partition("=")
        workload, _, size = key.partition(".")
        if not value or not size or workload not in WORKLOADS:
            raise SystemExit(f"--size {entry!r}: expected WORKLOAD.SIZE=INT with WORKLOAD in {sorted(WORKLOADS)}")
        sizes.setdefault(workload, {})[size] = int(value)
    return sizes


def add_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "benchmark", help="time fp32, bf16, our int8, ONNX Runtime and OpenVINO on one model, ratios from one run",
        description="Build each variant's checkpoint from an fp32 model (or a preset with random weights), measure "
                    "load time and load memory in fresh processes, then time greedy/beam generation and the "
                    "encoder forward with interleaved repeats. Prints a table, writes JSON and a PNG plot.",
    )
    parser.add_argument("model", nargs="?", default="bart-large-cnn",
                        help=f"a preset ({', '.join(sorted(PRESETS))}) or an fp32 model directory (default: %(default)s)")
    parser.add_argument("--workdir", type=Path, default=Path("benchmark-workdir"),
                        help="where the variants' checkpoints are built and cached (default: %(default)s)")
    parser.add_argument("--variants", nargs="+", metavar="NAME",
                        help=f"variants to run (registered: {', '.join(VARIANTS)}; default: all that are installed)")
    by_default = ", ".join(name for name, workload in WORKLOADS.items() if workload.by_default)
    named_only = ", ".join(name for name, workload in WORKLOADS.items() if not workload.by_default)
    parser.add_argument("--workloads", nargs="+", metavar="NAME",
                        help=f"workloads (default: those of {by_default} that apply; run only when named: {named_only})")
    parser.add_argument("--fallbacks", type=Path, metavar="FILE",
                        help="Linear module names (one per line) to keep in float: adds an int8 variant with them "
                             "in fp32 and one with them in bf16")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per variant and workload (default: 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (default: 1)")
    parser.add_argument("--threads", type=int, help="torch, ONNX Runtime and OpenVINO threads (default: torch's default)")
    parser.add_argument("--seed", type=int, default=0, help="seed of a preset's weights and of the inputs")
    parser.add_argument("--size", action="append", default=[], metavar="WORKLOAD.SIZE=N",
                        help="override a workload size, e.g. greedy.new_tokens=64 (repeatable)")
    parser.add_argument("--no-load", action="store_true", help="skip the fresh-process load measurements")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the checkpoints cached in --workdir")
    parser.add_argument("--profile", action="store_true",
                        help="after timing, profile one run of each workload and variant and split it by kind of operator")
    parser.add_argument("--json", type=Path, default=Path("benchmark.json"), help="JSON output (default: %(default)s)")
    parser.add_argument("--plot", type=Path, default=Path("benchmark.png"),
                        help="PNG plot, written when matplotlib is installed (default: %(default)s)")
    parser.set_defaults(run=run)


def run(args) -> int:
    fallbacks = read_module_list(args.fallbacks) if args.fallbacks else []
    settings = BenchmarkSettings(
        model=args.model, workdir=args.workdir, variants=args.variants, workloads=args.workloads,
        fallbacks=fallbacks, fallbacks_source=args.fallbacks.name if args.fallbacks else "a given list",
        repeats=args.repeats, warmup=args.warmup, threads=args.threads, seed=args.seed,
        measure_load=not args.no_load, sizes=_sizes(args.size), rebuild=args.rebuild, profile=args.profile,
    )
    result = run_benchmark(settings)
    print_report(result)
    write_json(result, args.json)
    print(f"wrote {args.json}")
    if write_plot(result, args.plot):
        print(f"wrote {args.plot}")
    print("machine:", json.dumps({key: result.machine[key] for key in ("cpu", "cpu_count", "torch_threads", "before", "after")}))
    return 0
