"""Automatic, lazy ``torch.compile`` of the integer-only encoder: what makes a loaded ibert model fast by default.

Eager PyTorch runs every integer op of a layer (requantization, i-exp softmax, i-GELU, integer LayerNorm) as
its own pass over int64 tensors; inductor fuses each stage into one vectorized loop, about 5x faster. So the
embeddings and every encoder layer run through a ``CompiledFunction``: the first call of a process compiles (one
graph shared by all layers of every model with the same sizes), later calls reuse it. The batch and sequence
dimensions are marked dynamic, so new sequence lengths do not recompile (a batch of one is its own graph:
torch specializes sizes 0 and 1). Integer arithmetic makes the compiled outputs bit-identical to eager ones.

Where compiling cannot work (no C++ compiler, a torch or Python that inductor does not support), the first
failing call runs eagerly, one ``IntegerCompileWarning`` says why, and the process stays eager from then on.
``OPTIMUM_INT8_COMPILE=0`` (read on every call) or ``compile_integer_layers(model, enabled=False)`` runs eagerly
without trying.
"""

import contextlib
import time
import warnings
from collections.abc import Callable

import torch

from ..compilation import COMPILE_ENV, compile_switched_off
# Newton's square root and the bit-length search of the integer LayerNorm read each step's value two or three
# times; inductor inlines such chains into one expression and then traces it once per read, exponentially
# (inductor's CPU default realizes only chains of over 50 ops). Realizing every reused value of over 20 ops
# cut the first call on RoBERTa-base from 63 s to 27 s (2 cores), at the same speed afterwards; 8 ran 30% slower.
INDUCTOR_OPTIONS = {"realize_opcount_threshold": 20}


class IntegerCompileWarning(UserWarning):
    """torch.compile failed on this machine: the integer-only layers run eagerly (correct, several times slower)."""


class _State:
    failure: str | None = None  # why compiling failed in this process; None while it works (or was not tried)
    forced_eager: int = 0  # depth of ``eager()`` contexts
    compile_seconds: float = 0.0  # wall time of the calls that compiled a new graph, summed over the process
    compiled_graphs: int = 0


_STATE = _State()


def compile_enabled() -> bool:
    """Whether integer layers compile in this process now (no failure yet, not switched off)."""
    return _STATE.failure is None and not _STATE.forced_eager and not compile_switched_off()


@contextlib.contextmanager
def eager():
    """Run every integer layer eagerly inside this block (tests; comparing against the compiled path)."""
    _STATE.forced_eager += 1
    try:
        yield
    finally:
        _STATE.forced_eager -= 1


def compile_statistics() -> dict:
    """``{"graphs": n, "seconds": s}``: graphs compiled by ``CompiledFunction`` in this process and the wall time of the
    calls that compiled them (tracing, inductor and the C++ compiler, plus that call's own run)."""
    return {"graphs": _STATE.compiled_graphs, "seconds": _STATE.compile_seconds}


def _mark_dynamic(tensor: torch.Tensor | None, dims: tuple[int, ...]) -> None:
    if tensor is None:
        return
    for dim in dims:
        if tensor.shape[dim] > 1:
            torch._dynamo.maybe_mark_dynamic(tensor, dim)


def _graph_count() -> int:
    # Dynamo counts the graphs it compiled in this process; a call that raises the count compiled one.
    return torch._dynamo.utils.counters["stats"].get("unique_graphs", 0)


class CompiledFunction:
    """``function`` under ``torch.compile``, built on first use; ``dynamic`` maps argument positions to the dims to
    mark dynamic (batch, sequence)."""

    def __init__(self, function: Callable, dynamic: dict[int, tuple[int, ...]]):
        self.function = function
        self.dynamic = dynamic
        self._compiled = None

    def _build(self):
        if self._compiled is None:
            self._compiled = torch.compile(self.function, dynamic=None, options=dict(INDUCTOR_OPTIONS))
        return self._compiled

    def __call__(self, *args):
        if torch.compiler.is_compiling():  # inside a user's own torch.compile of the whole model: let it trace
            return self.function(*args)
        if not compile_enabled():
            return self.function(*args)
        try:
            compiled = self._build()
            for position, dims in self.dynamic.items():
                _mark_dynamic(args[position], dims)
            before = _graph_count()
            start = time.perf_counter()
            # No gradients for integer tensors: one grad mode, one graph. Size-oblivious sizes: a batch of one
            # runs the same graph as a batch of eight instead of compiling its own (torch specializes 0 and 1).
            with torch.no_grad(), torch.fx.experimental._config.patch(backed_size_oblivious=True):
                result = compiled(*args)
            if _graph_count() != before:
                _STATE.compiled_graphs += _graph_count() - before
                _STATE.compile_seconds += time.perf_counter() - start
            return result
        except Exception as error:  # noqa: BLE001: any compiler failure falls back; a genuine error re-raises below
            result = self.function(*args)  # an error of the inputs themselves raises here, as it would eagerly
            _fall_back(error)
            return result


def _fall_back(error: Exception) -> None:
    if _STATE.failure is not None:
        return
    _STATE.failure = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
    warnings.warn(
        f"torch.compile does not work here ({_STATE.failure[:300]}); integer-only (ibert) layers run eagerly from now "
        f"on: same outputs, several times slower. A C++ compiler (g++) and a torch release that supports this Python "
        f"make them fast; set {COMPILE_ENV}=0 to skip the attempt.",
        IntegerCompileWarning,
        stacklevel=3,
    )
