"""Which int8 kernel runs a Linear layer: the one table of measured choices, per CPU and per row count.

A ``KernelPlan`` is decided once per layer when its weight is packed, from the CPU's capabilities and
what the user asked for (``Int8Config(kernel=...)`` or ``OPTIMUM_INT8_KERNEL``); at call time it picks
between at most two backends by the number of activation rows (decode steps have a few, prefill has
hundreds). The file format never depends on the plan: every backend packs from, and unpacks to, the
same int8 codes and fp32 scales.
"""

import dataclasses
import os

import torch

from . import capabilities as cpu
from . import fbgemm, onednn

KERNEL_ENV = "OPTIMUM_INT8_KERNEL"
AUTO = "auto"

# Every int8 backend: a module with ``name``, ``unavailable_reason(capabilities)``, ``pack``, ``unpack``,
# ``linear(x, packed, reduce_range, out_dtype)`` (dynamic per-tensor activations) and, for the activation
# granularities it supports, ``linear_per_token(x, packed, out_dtype, input_multiplier=None)``,
# ``linear_static(x, packed, scale, zero_point, out_dtype, input_multiplier=None)`` and
# ``linear_static_requantized(x, packed, scale, zero_point, output_scale, output_zero_point, out_dtype,
# input_multiplier=None)``; the per-token and static ones multiply ``x`` by ``input_multiplier`` [in] (SmoothQuant)
# first.
BACKENDS = {backend.name: backend for backend in (fbgemm, onednn)}
KERNEL_CHOICES = (AUTO, *BACKENDS)
# How a layer quantizes its input: one dynamic scale per call, one per row (token), or a calibrated one; or a
# calibrated one with its output requantized by calibrated output qparams too (legacy INC static checkpoints).
PER_TENSOR, PER_TOKEN, STATIC = "per_tensor", "per_token", "static"
STATIC_REQUANTIZED = "static_requantized"
_ACTIVATION_FUNCTIONS = {PER_TENSOR: "linear", PER_TOKEN: "linear_per_token", STATIC: "linear_static",
                         STATIC_REQUANTIZED: "linear_static_requantized"}
ACTIVATIONS = tuple(_ACTIVATION_FUNCTIONS)


def supports(backend: str, activations: str) -> bool:
    """Whether ``backend`` has a GEMM for this activation granularity."""
    return hasattr(BACKENDS[backend], _ACTIVATION_FUNCTIONS[activations])


def _function(backend: str, activations: str):
    return getattr(BACKENDS[backend], _ACTIVATION_FUNCTIONS[activations])


# The GEMMs that trace into a compiled graph: plain tensor ops around an opaque oneDNN call (``onednn``). The others
# quantize through torch's quantized tensors and Python scalars: inside a compiled model they run eagerly between
# the compiled parts, through wrappers made once here (making one while tracing would itself break the graph).
_TRACEABLE = {(onednn.name, STATIC)}
_EAGER_IN_COMPILED_MODELS = {
    (backend, activations): torch.compiler.disable(_function(backend, activations))
    for backend in BACKENDS for activations in ACTIVATIONS
    if supports(backend, activations) and (backend, activations) not in _TRACEABLE
}


def linear_function(backend: str, activations: str):
    if torch.compiler.is_compiling():
        eager = _EAGER_IN_COMPILED_MODELS.get((backend, activations))
        if eager is not None:
            return eager
    return _function(backend, activations)


@dataclasses.dataclass(frozen=True)
class DispatchRule:
    """On CPUs with ``requires``, run ``backend``, and ``short_backend`` for inputs of fewer rows than
    ``short_below`` (None: one backend for every shape)."""

    requires: str
    backend: str
    short_backend: str | None = None
    short_below: int = 0
    activations: str = PER_TENSOR


# First matching rule wins. Measured with examples/gemm_kernels.py on BART-large Linear shapes, 2 threads
# (docs/kernels.md): on AMX, oneDNN's int8 GEMM is 2-5x fbgemm's from 64 rows up, but its per-call
# activation quantization in eager torch costs more than fbgemm's fused one below ~32 rows. On AVX-512
# VNNI without AMX, fbgemm (8-bit activations) is within 10-25% of oneDNN at 512+ rows and faster below.
# Per-token and static activations (examples/gemm_kernels.py --activations, VNNI, 2 threads): oneDNN's GEMM
# from 2 rows up, but a single-row oneDNN call costs 60-170 us of overhead on SmolLM2/BART shapes where
# fbgemm's fused static GEMM takes 20-30 us, so decode steps go to fbgemm (one call per row: per-token on
# fbgemm alone, as on AVX2-only CPUs, is slow for prefill but runs).
DISPATCH_RULES = (
    DispatchRule("amx_int8", "onednn", short_backend="fbgemm", short_below=32),
    DispatchRule("avx512_vnni", "fbgemm"),
    DispatchRule("avx2", "fbgemm"),
    DispatchRule("avx512_vnni", "onednn", short_backend="fbgemm", short_below=2, activations=PER_TOKEN),
    DispatchRule("avx2", "fbgemm", activations=PER_TOKEN),
    DispatchRule("avx512_vnni", "onednn", short_backend="fbgemm", short_below=32, activations=STATIC),
    DispatchRule("avx2", "fbgemm", activations=STATIC),
    # fbgemm's requantizing GEMM only: the output rounding is the kernel's own, so no other backend reproduces it.
    DispatchRule("avx2", "fbgemm", activations=STATIC_REQUANTIZED),
)


class KernelUnavailableError(RuntimeError):
    """No int8 kernel (or not the requested one) runs on this CPU with this torch build."""


@dataclasses.dataclass(frozen=True)
class KernelPlan:
    backend: str
    reduce_range: bool
    short_backend: str | None = None
    short_below: int = 0
    activations: str = PER_TENSOR

    def backend_for(self, rows: int) -> str:
        return self.short_backend if self.short_backend is not None and rows < self.short_below else self.backend

    def describe(self) -> str:
        bits = "7-bit" if self.reduce_range else "8-bit"
        granularity = "" if self.activations == PER_TENSOR else f" {self.activations.replace('_', '-')}"
        if self.short_backend is None:
            return f"{self.backend} ({bits}{granularity} activations)"
        return f"{self.backend}, {self.short_backend} below {self.short_below} rows ({bits}{granularity} activations)"


def requested_kernel(kernel: str | None = None) -> str:
    """The kernel asked for: the environment variable overrides the config's ``auto``."""
    requested = kernel or AUTO
    if requested == AUTO:
        requested = os.environ.get(KERNEL_ENV, AUTO) or AUTO
    if requested not in KERNEL_CHOICES:
        raise ValueError(
            f"int8 kernel {requested!r} (Int8Config(kernel=...) or {KERNEL_ENV}) is unknown; choose one of {list(KERNEL_CHOICES)}"
        )
    return requested


def _check_runs(backend: str, capabilities: cpu.CpuCapabilities) -> None:
    reason = BACKENDS[backend].unavailable_reason(capabilities)
    if reason is not None:
        raise KernelUnavailableError(
            f"the {backend!r} int8 kernel cannot run here: {reason} (CPU flags: {capabilities.flags() or 'none'}). "
            f"Use kernel='auto' or one of the kernels this CPU runs."
        )


def plan(kernel: str | None = None, reduce_range: bool | None = None,
         capabilities: cpu.CpuCapabilities | None = None, activations: str = PER_TENSOR) -> KernelPlan:
    """The plan for ``kernel`` (``auto``: the first rule the CPU satisfies) on ``capabilities`` (default: this
    CPU), for layers that quantize their input with ``activations`` granularity. ``reduce_range`` None means
    7-bit activations only where the CPU needs them (no VNNI)."""
    if activations not in ACTIVATIONS:
        raise ValueError(f"activation granularity {activations!r} is unknown; choose one of {list(ACTIVATIONS)}")
    capabilities = capabilities or cpu.current()
    requested = requested_kernel(kernel)
    if reduce_range is None:
        reduce_range = capabilities.needs_reduce_range
    if requested != AUTO:
        _check_runs(requested, capabilities)
        if not supports(requested, activations):
            raise KernelUnavailableError(
                f"the {requested!r} int8 kernel has no GEMM for {activations.replace('_', '-')} activations; "
                f"use kernel='auto' or one of {[b for b in BACKENDS if supports(b, activations)]}."
            )
        return KernelPlan(requested, reduce_range, activations=activations)
    for rule in DISPATCH_RULES:
        if rule.activations == activations and getattr(capabilities, rule.requires) and all(
            BACKENDS[b].unavailable_reason(capabilities) is None for b in (rule.backend, rule.short_backend) if b
        ):
            return KernelPlan(rule.backend, reduce_range, rule.short_backend, rule.short_below, activations)
    reasons = "; ".join(f"{name}: {b.unavailable_reason(capabilities)}" for name, b in BACKENDS.items())
    if activations != PER_TENSOR:
        raise KernelUnavailableError(
            f"no int8 kernel for {activations.replace('_', '-')} activations runs on this CPU (CPU flags: "
            f"{capabilities.flags() or 'none'}; {reasons}). Use a scheme with per-tensor dynamic activations "
            "(Int8Config(scheme='int8_dynamic')) or weight-only int8 here."
        )
    raise KernelUnavailableError(
        f"no int8 kernel runs on this CPU with torch ({reasons}). optimum-int8 needs an x86 CPU with AVX2 and a "
        "standard torch CPU build (`pip install torch==2.13.0`)."
    )


def check_available() -> None:
    """Raise a KernelUnavailableError if no int8 kernel runs here."""
    plan()
