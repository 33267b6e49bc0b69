"""Present a benchmark result: a table (rich when installed, else plain text), JSON, and a PNG plot."""

import importlib.util
import json
import sys
from pathlib import Path

from .results import BenchmarkResult

MIB = 1024 * 1024


def _ratio(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None else "–"


def table_rows(result: BenchmarkResult) -> tuple[list[str], list[list[str]]]:
    """Headers and rows: per workload the median seconds and the speedups vs fp32 and bf16 ("skipped" where the
    variant cannot run the workload), then load and size."""
    headers = ["variant"]
    for title in result.workloads.values():
        headers += [f"{title} (s)", "vs fp32", "vs bf16"]
    headers += ["load (s)", "load peak (MiB)", "file (MiB)", "file vs fp32"]
    fp32 = result.variant("fp32")
    rows = []
    for variant in result.variants:
        row = [variant.label]
        for workload in result.workloads:
            if workload in variant.skipped:
                row += ["skipped", "–", "–"]
                continue
            median = variant.median(workload)
            row += [f"{median:.3f}" if median is not None else "–",
                    _ratio(result.speedup(variant, workload, "fp32")), _ratio(result.speedup(variant, workload, "bf16"))]
        row += [
            f"{variant.load_seconds:.2f}" if variant.load_seconds is not None else "–",
            f"{variant.load_peak_bytes / MIB:.0f}" if variant.load_peak_bytes is not None else "–",
            f"{variant.checkpoint_bytes / MIB:.0f}",
            f"{variant.checkpoint_bytes / fp32.checkpoint_bytes:.2f}x" if fp32 else "–",
        ]
        rows.append(row)
    return headers, rows


def markdown_table(result: BenchmarkResult) -> str:
    headers, rows = table_rows(result)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def profile_tables(result: BenchmarkResult) -> str:
    """Markdown: per workload, each variant's profiled run split by kind of operator (seconds)."""
    tables = []
    for workload, title in result.workloads.items():
        profiled = [v for v in result.variants if workload in v.profile]
        if not profiled:
            continue
        columns = list(profiled[0].profile[workload])
        lines = [f"{title}, one profiled run (s):", "", "| variant | " + " | ".join(columns) + " |",
                 "|" + "---|" * (len(columns) + 1)]
        lines += ["| " + " | ".join([v.label] + [f"{v.profile[workload][c]:.3f}" for c in columns]) + " |"
                  for v in profiled]
        tables.append("\n".join(lines))
    return "\n\n".join(tables)


def print_table(result: BenchmarkResult) -> None:
    """A rich table on a terminal; Markdown otherwise (a log, a pipe), which also pastes into docs."""
    headers, rows = table_rows(result)
    if importlib.util.find_spec("rich") is None or not sys.stdout.isatty():
        print(markdown_table(result))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=result.model)
    for index, header in enumerate(headers):
        table.add_column(header, justify="left" if index == 0 else "right")
    for row in rows:
        table.add_row(*row)
    Console().print(table)


def machine_line(result: BenchmarkResult) -> str:
    """The CPU and its capabilities, and the int8 kernels each of our variants ran on."""
    machine = result.machine
    lines = [f"CPU: {machine.get('cpu')}, flags: {', '.join(machine.get('isa') or []) or 'none'}, "
             f"{machine.get('torch_threads')} torch threads"]
    lines += [f"  {variant.label}: {variant.kernel}" for variant in result.variants if variant.kernel]
    return "\n".join(lines)


def print_report(result: BenchmarkResult) -> None:
    print(machine_line(result))
    print_table(result)
    profiles = profile_tables(result)
    if profiles:
        print("\n" + profiles)


def write_json(result: BenchmarkResult, path: Path) -> None:
    Path(path).write_text(json.dumps(result.to_dict(), indent=2) + "\n")


def write_plot(result: BenchmarkResult, path: Path) -> bool:
    """Speedup vs fp32 per workload, and file size / load peak per variant. False if matplotlib is missing."""
    if importlib.util.find_spec("matplotlib") is None:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [variant.label for variant in result.variants]
    figure, axes = plt.subplots(1, len(result.workloads) + 1, figsize=(4.2 * (len(result.workloads) + 1), 4.8))
    for axis, (workload, title) in zip(axes, result.workloads.items()):
        speedups = [result.speedup(variant, workload, "fp32") or 0.0 for variant in result.variants]
        bars = axis.barh(names, speedups, color="tab:blue")
        labels = ["skipped" if workload in v.skipped else f"{s:.2f}x" for v, s in zip(result.variants, speedups)]
        axis.bar_label(bars, labels=labels, padding=2, fontsize=8)
        axis.axvline(1.0, color="grey", linewidth=0.8)
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("speedup vs fp32 (median)")
        axis.invert_yaxis()
        axis.set_xlim(0, max(speedups) * 1.25 if any(speedups) else 1)
        if axis is not axes[0]:
            axis.set_yticklabels([])
    sizes = axes[-1]
    positions = range(len(result.variants))
    sizes.barh([p - 0.2 for p in positions], [v.checkpoint_bytes / MIB for v in result.variants], height=0.4,
               label="file", color="tab:green")
    sizes.barh([p + 0.2 for p in positions], [(v.load_peak_bytes or 0) / MIB for v in result.variants], height=0.4,
               label="load peak above baseline", color="tab:orange")
    sizes.set_yticks(list(positions), [])
    sizes.invert_yaxis()
    sizes.set_xlabel("MiB")
    sizes.set_title("size and load memory", fontsize=10)
    sizes.legend(fontsize=8)
    figure.suptitle(result.model, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True
