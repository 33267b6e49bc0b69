"""The fast path of the integer-only encoder, on by default: what makes a loaded ibert model fast without a step of the
user's own.

Eager PyTorch runs every integer op of a layer (requantization, i-exp softmax, i-GELU, integer LayerNorm) as its own
pass over int64 tensors. The fast path runs each of these stages as one row-fused native loop instead
(``nn/integer_native.py``): the first call of a process loads them, and on a machine that never ran them compiles
them first (a second or two, once; no graph per shape, so every batch size and sequence length runs at once). The
loops do the reference's integer arithmetic, so outputs are bit-identical to the eager path.

Where the kernels cannot be built (no C++ compiler), the first call runs eagerly, one ``IntegerCompileWarning`` says
why, and the process stays eager from then on. ``OPTIMUM_INT8_COMPILE=0`` (read on every call) or
``compile_integer_layers(model, enabled=False)`` runs eagerly without trying. Inside a user's own ``torch.compile`` of
the whole model the layers run the reference ops, which trace.
"""

import contextlib
import time
import warnings

import torch

from ..compilation import COMPILE_ENV, compile_switched_off
from ..nn import integer_native


class IntegerCompileWarning(UserWarning):
    """The native integer kernels cannot be built here: the integer-only layers run eagerly (correct, several times
    slower)."""


class _State:
    warned: bool = False  # the one warning of a failed build was given
    forced_eager: int = 0  # depth of ``eager()`` contexts
    load_seconds: float | None = None  # wall time of the first load (and build, where the cache was empty)


_STATE = _State()


@contextlib.contextmanager
def eager():
    """Run every integer layer eagerly on the reference ops inside this block (tests; comparing against the fast path)."""
    _STATE.forced_eager += 1
    try:
        yield
    finally:
        _STATE.forced_eager -= 1


def fast_path_ready() -> bool:
    """Whether integer layers run on the native kernels now: not switched off, not forced eager, not inside a
    ``torch.compile`` trace (their ctypes calls do not trace), and built and loaded (on the first call that asks)."""
    if torch.compiler.is_compiling() or _STATE.forced_eager or compile_switched_off():
        return False
    start = time.perf_counter()
    ready = integer_native.load() is not None
    if _STATE.load_seconds is None:
        _STATE.load_seconds = time.perf_counter() - start
    if not ready and not _STATE.warned:
        _STATE.warned = True
        warnings.warn(
            f"the native integer kernels cannot be built here ({integer_native.unavailable_reason()}); integer-only "
            f"(ibert) layers run eagerly from now on: same outputs, several times slower. A C++ compiler (g++, or $CXX) "
            f"makes them fast; set {COMPILE_ENV}=0 to skip the attempt.",
            IntegerCompileWarning,
            stacklevel=3,
        )
    return ready


def load_statistics() -> dict:
    """``{"seconds": s, "kernels": path}``: how long this process took to load the native kernels (building them
    first where the cache was empty), None before the first call, and the library file (None where it failed)."""
    return {"seconds": _STATE.load_seconds, "kernels": integer_native.library_path()}
