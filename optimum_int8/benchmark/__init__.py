"""Benchmarks of our int8 models against fp32, bf16, ONNX Runtime's dynamic int8, OpenVINO and llama.cpp, ratios
from one run.

    from optimum_int8.benchmark import BenchmarkSettings, run_benchmark
    result = run_benchmark(BenchmarkSettings(model="bart-large-cnn", fallbacks=[...]))

Variants (``VARIANTS``), workloads (``WORKLOADS``) and model presets (``PRESETS``) are small registries:
``register_variant`` / ``register_workload`` / ``register_preset`` add to them. docs/benchmarks.md has the
measured table and the command that produced it.
"""

from . import llama_cpp_runtime, onnx_runtime, openvino_runtime  # noqa: F401  (register the peers' variants)
from .load_memory import LoadMeasurement, measure_in_fresh_process
from .presets import PRESETS, ModelPreset, register_preset
from .profiling import profile_run
from .report import (
    markdown_table, print_report, print_table, profile_tables, table_rows, token_rates, write_json, write_plot,
)
from .results import BenchmarkResult, VariantResult
from .runner import BenchmarkSettings, read_module_list, run_benchmark
from .variants import VARIANTS, Variant, fallback_variants, int8_variant, register_variant
from .workloads import WORKLOADS, Workload, register_workload

from ..ibert import benchmark as _ibert_benchmark  # noqa: E402, F401  (registers roberta-base, forward, ibert variants)

__all__ = [
    "PRESETS", "VARIANTS", "WORKLOADS", "BenchmarkResult", "BenchmarkSettings", "LoadMeasurement", "ModelPreset",
    "Variant", "VariantResult", "Workload", "fallback_variants", "int8_variant", "markdown_table",
    "measure_in_fresh_process", "print_report", "print_table", "profile_run", "profile_tables", "read_module_list",
    "register_preset", "register_variant", "register_workload", "run_benchmark", "table_rows", "token_rates",
    "write_json", "write_plot",
]
