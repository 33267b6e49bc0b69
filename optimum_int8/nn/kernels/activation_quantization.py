"""Per-tensor uint8 quantization of an activation, for the oneDNN int8 GEMM: eager, or compiled into one kernel.

In eager torch, quantizing a bf16 activation takes four passes over it (min/max, upcast, quantize, copy of
the codes) and costs more than the int8 GEMM it feeds on large inputs. ``torch.compile`` (inductor's C++
backend) fuses them into one reduction and one elementwise loop: 2.5x less time on a 2048 x 4096 bf16
activation (docs/kernels.md). It is compiled once per process, on the first large input (a few seconds,
cached by inductor across processes), for any shape. Where the compiler is missing or fails, or with
``OPTIMUM_INT8_COMPILE=0``, the eager path runs instead, after one warning.
"""

import math
import os
import threading
import warnings

import torch


COMPILE_ENV = "OPTIMUM_INT8_COMPILE"
# Below this many elements the compiled function's call overhead outweighs what it saves.
COMPILE_MIN_ELEMENTS = 1 << 16
_UPCAST_BLOCK_ELEMENTS = 1 << 20


def _check_finite(low: float, high: float) -> None:
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(
            f"the input of an int8 Linear layer contains NaN or Inf (min {low}, max {high}); it cannot be quantized."
        )


def quantize_eager(x: torch.Tensor, qmax: int) -> tuple[torch.Tensor, float, int]:
    """uint8 codes, scale and zero point of ``x`` per tensor, over [min(x, 0), max(x, 0)] as torch.ao's dynamic
    quantization chooses them (``qmax`` 127: 7-bit codes)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch 2.13 deprecates quantized tensors; docs/kernels.md has the plan
        return _quantize_eager(x, qmax)


def _quantize_eager(x: torch.Tensor, qmax: int) -> tuple[torch.Tensor, float, int]:
    low, high = (value.item() for value in torch.aminmax(x))
    _check_finite(low, high)
    low, high = min(low, 0.0), max(high, 0.0)
    scale = (high - low) / qmax or 1.0
    zero_point = min(qmax, max(0, round(-low / scale)))
    if x.dtype == torch.float32:
        return torch.quantize_per_tensor(x, scale, zero_point, torch.quint8).int_repr(), scale, zero_point
    # torch quantizes fp32 only. Upcasting a large bf16 activation whole writes a fresh fp32 buffer (32 MiB for
    # a BART-large FFN's 2048 x 4096, which glibc maps anew, page by page, on every call); in blocks of rows
    # the copy stays in cache.
    rows = x.reshape(-1, x.shape[-1])
    codes = torch.empty(rows.shape, dtype=torch.uint8)
    step = max(1, _UPCAST_BLOCK_ELEMENTS // rows.shape[1])
    for start in range(0, rows.shape[0], step):
        block = rows[start:start + step].float()
        codes[start:start + step].copy_(torch.quantize_per_tensor(block, scale, zero_point, torch.quint8).int_repr())
    return codes.view(x.shape), scale, zero_point


def _quantize_fused(x: torch.Tensor, qmax: int):
    """What ``quantize_eager`` computes, written for inductor to fuse (scale and zero point as tensors), and
    whether ``x`` is finite (inductor's min/max skip NaN)."""
    low = torch.clamp(x.amin(), max=0).float()
    high = torch.clamp(x.amax(), min=0).float()
    scale = (high - low) / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero_point = torch.clamp(torch.round(-low / scale), 0, qmax)
    codes = torch.clamp(torch.round(x.float() / scale) + zero_point, 0, qmax).to(torch.uint8)
    return codes, scale, zero_point.to(torch.int32), torch.isfinite(x).all()


class _Compiled:
    """The fused quantizer, compiled on first use; None once compiling failed (then eager, one warning)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._function = None
        self._failed = False

    def __call__(self, x: torch.Tensor, qmax: int):
        if self._failed:
            return None
        try:
            if self._function is None:
                with self._lock:
                    if self._function is None:
                        self._function = torch.compile(_quantize_fused, dynamic=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return self._function(x.reshape(-1, x.shape[-1]), qmax)
        except Exception as error:  # no C++ compiler, an inductor bug: eager is correct, only slower
            self._failed = True
            warnings.warn(
                f"optimum-int8 could not compile its activation quantizer ({type(error).__name__}: "
                f"{str(error)[:200]}); int8 layers on the oneDNN kernel run it in eager torch, slower. "
                f"Set {COMPILE_ENV}=0 to skip compiling.",
                RuntimeWarning, stacklevel=3,
            )
            return None


_compiled = _Compiled()


def compile_enabled() -> bool:
    return os.environ.get(COMPILE_ENV, "1") not in ("0", "false", "False", "")


def quantize(x: torch.Tensor, qmax: int):
    """``(codes, scale, zero_point)``: compiled for large inputs when enabled, else ``quantize_eager``.
    Scale and zero point are Python numbers (eager) or 0-d tensors (compiled); the oneDNN op takes both."""
    if x.numel() >= COMPILE_MIN_ELEMENTS and compile_enabled():
        fused = _compiled(x, qmax)
        if fused is not None:
            codes, scale, zero_point, finite = fused
            if not finite.item():
                _check_finite(*(value.item() for value in torch.aminmax(x)))
            return codes.view(x.shape), scale, zero_point
    return quantize_eager(x, qmax)
