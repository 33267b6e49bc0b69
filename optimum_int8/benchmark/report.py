"""Present a benchmark result: a table (rich when installed, else plain text), JSON, and a PNG plot."""

import importlib.util
import json
import sys
from pathlib import Path

from .results import BenchmarkResult
from .workloads import WORKLOADS

MIB = 1024 * 1024


def _ratio(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None else "–"


def _counts_tokens(workload: str) -> bool:
    return workload in WORKLOADS and WORKLOADS[workload].tokens is not None


def _same_prompt(sizes: dict | None, other: dict | None) -> bool:
    keys = ("prompt_length", "batch")
    return sizes is not None and other is not None and all(sizes.get(k, 1) == other.get(k, 1) for k in keys)


def token_rates(result: BenchmarkResult) -> dict[str, dict[str, float]]:
    """{variant name: {workload: tokens per second}} from this run's medians, for the workloads that count tokens
    (``Workload.tokens``). A decode rate leaves out the time of the prefill it starts with (``Workload.includes``),
    when that was timed on the same prompt; otherwise it has none."""
    sizes = result.settings.get("sizes", {})
    rates: dict[str, dict[str, float]] = {}
    for variant in result.variants:
        for name in filter(_counts_tokens, result.workloads):
            workload, seconds = WORKLOADS[name], variant.median(name)
            if seconds is None or name not in sizes:
                continue
            if workload.includes is not None:
                first = variant.median(workload.includes)
                if first is None or not _same_prompt(sizes[name], sizes.get(workload.includes)):
                    continue
                seconds -= first
            if seconds > 0:
                rates.setdefault(variant.name, {})[name] = workload.tokens(sizes[name]) / seconds
    return rates


def table_rows(result: BenchmarkResult) -> tuple[list[str], list[list[str]]]:
    """Headers and rows: per workload the median seconds and the speedups vs fp32 and bf16 ("skipped" where the
    variant cannot run the workload), and tokens per second for the workloads that count tokens, then load and
    size."""
    headers = ["variant"]
    for workload, title in result.workloads.items():
        headers += [f"{title} (s)", "vs fp32", "vs bf16"]
        if _counts_tokens(workload):
            headers.append(f"{workload} tok/s")
    headers += ["load (s)", "load peak (MiB)", "file (MiB)", "file vs fp32"]
    fp32 = result.variant("fp32")
    rates = token_rates(result)
    rows = []
    for variant in result.variants:
        row = [variant.label]
        for workload in result.workloads:
            rate = rates.get(variant.name, {}).get(workload)
            tokens = [f"{rate:.1f}" if rate is not None else "–"] if _counts_tokens(workload) else []
            if workload in variant.skipped:
                row += ["skipped", "–", "–", *tokens]
                continue
            median = variant.median(workload)
            row += [f"{median:.3f}" if median is not None else "–",
                    _ratio(result.speedup(variant, workload, "fp32")), _ratio(result.speedup(variant, workload, "bf16")),
                    *tokens]
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
    if machine.get("isa_choices") not in (None, machine.get("isa")):
        lines.append(f"  emulating: kernel choices for flags {', '.join(machine['isa_choices']) or 'none'}")
    if machine.get("onednn_max_cpu_isa"):
        lines.append(f"  emulating: oneDNN limited to ONEDNN_MAX_CPU_ISA={machine['onednn_max_cpu_isa']}")
    lines += [f"  {variant.label}: {variant.kernel}" for variant in result.variants if variant.kernel]
    return "\n".join(lines)


def print_report(result: BenchmarkResult) -> None:
    print(machine_line(result))
    print_table(result)
    profiles = profile_tables(result)
    if profiles:
        print("\n" + profiles)


def write_json(result: BenchmarkResult, path: Path) -> None:
    data, rates = result.to_dict(), token_rates(result)
    for variant in data["variants"]:
        variant["tokens_per_second"] = rates.get(variant["name"], {})
    Path(path).write_text(json.dumps(data, indent=2) + "\n")


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
