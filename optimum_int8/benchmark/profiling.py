"""Where the time of one workload run goes, by kind of operator (torch.profiler, main thread).

Each operator's self time is added to its category; what is left of the wall time was spent outside torch
operators: Python (transformers' modules and generation loop), or another runtime such as ONNX Runtime.
The profiler adds a little overhead per operator, so small-op categories read slightly high.
"""

import collections
import time

import torch

# Operator name prefixes, first match wins.
CATEGORIES = (
    ("int8 GEMM", ("quantized::linear", "aten::_int_mm", "quantized::", "onednn::qlinear", "aten::_weight_int8pack_mm")),
    ("activation quantization", ("aten::aminmax", "aten::quantize_per_tensor", "aten::int_repr", "aten::item",
                                 "aten::_local_scalar_dense")),
    # I-BERT's elementwise integer stages on the native kernels (labelled by nn/integer_native.py).
    ("integer stages (native)", ("optimum_int8::native_",)),
    ("float GEMM", ("aten::addmm", "aten::mm", "mkldnn::_linear_pointwise", "aten::linear")),
    ("attention", ("aten::_scaled_dot_product", "aten::scaled_dot_product", "aten::bmm", "aten::_softmax",
                   "aten::softmax", "aten::baddbmm")),
    ("norm, activation, residual", ("aten::native_layer_norm", "aten::layer_norm", "aten::gelu", "aten::add",
                                    "aten::mul", "aten::tanh", "aten::relu", "aten::silu")),
    ("copies, casts, cache", ("aten::copy_", "aten::_to_copy", "aten::to", "aten::cat", "aten::index_select",
                              "aten::contiguous", "aten::clone")),
    # A compiled region's own time: inductor's fused kernels and wrapper code (the operators it calls, such as the
    # int8 GEMMs, count above), and dynamo checking its guards before each call.
    ("compiled graph and guards", ("## Call CompiledFxGraph", "TorchDynamo Cache Lookup", "Torch-Compiled Region",
                                   "Pregraph bytecode", "AOTDispatcher")),
)
OTHER_OPS = "other torch ops"
OUTSIDE = "outside torch ops (Python, other runtimes)"


def category(op_name: str) -> str:
    return next((name for name, prefixes in CATEGORIES if op_name.startswith(prefixes)), OTHER_OPS)


def profile_run(workload, model, inputs: dict, sizes: dict) -> dict[str, float]:
    """Seconds per category for one run of ``workload``, plus ``"wall"``."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        start = time.perf_counter()
        workload.run(model, inputs, sizes)
        wall = time.perf_counter() - start
    seconds = collections.Counter()
    for event in profiler.key_averages():
        seconds[category(event.key)] += event.self_cpu_time_total / 1e6
    seconds[OUTSIDE] = max(wall - sum(seconds.values()), 0.0)
    return {"wall": wall, **{name: seconds[name] for name, _ in CATEGORIES}, OTHER_OPS: seconds[OTHER_OPS],
            OUTSIDE: seconds[OUTSIDE]}
