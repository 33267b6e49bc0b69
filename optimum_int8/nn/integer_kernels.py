"""The integer matrix products of the integer-only (I-BERT) scheme; the only place that knows their CPU kernels.

Linear layers run oneDNN's int8 GEMM on a weight reordered once into its blocked layout (``kernels.onednn``, on
VNNI or AMX) wherever its fp32 output is exact: every sum an integer below 2**24 in magnitude, which the weight
itself bounds (``exact_in_fp32``). Elsewhere they run ``torch._int_mm`` (int8 x int8 -> int32), which reorders the
weight on every call, on the weight stored transposed and contiguous, the layout that kernel is fastest with.

The two attention products (Q.K^T and probabilities.V) are small batched products that torch has no integer
kernel for on CPU: they run on fp32 ``bmm``, which is exact here because every operand and every partial sum is
an integer below 2**24 in magnitude (see ``integer_bmm``).
"""

import dataclasses

import torch

from .kernels import capabilities, onednn

_FP32_EXACT_INTEGER = 2**24
_MAX_ABS_CODE = 128


class IntegerKernelUnavailableError(RuntimeError):
    """This torch build has no int8 x int8 -> int32 matrix product on CPU."""


def check_available() -> None:
    """Raise if ``torch._int_mm`` is missing or fails on this CPU."""
    if not hasattr(torch, "_int_mm"):
        raise IntegerKernelUnavailableError(
            f"torch {torch.__version__} has no torch._int_mm; the ibert scheme needs torch>=2.6 on CPU."
        )
    probe = torch.ones(2, 8, dtype=torch.int8)
    try:
        torch._int_mm(probe, probe.t().contiguous())
    except RuntimeError as error:
        raise IntegerKernelUnavailableError(
            f"torch._int_mm does not run on this CPU with torch {torch.__version__} ({error}); "
            "the ibert scheme needs it. Use the int8_dynamic scheme instead."
        ) from error


@dataclasses.dataclass(frozen=True)
class IntegerWeight:
    """An int8 weight for ``int8_linear``, in one kernel's layout: reordered for oneDNN where it runs exactly, or
    stored transposed, ``weight_t`` [in, out], for ``torch._int_mm``."""

    weight_t: torch.Tensor | None
    onednn: onednn.OnednnWeight | None

    @property
    def kernel(self) -> str:
        return "onednn" if self.onednn is not None else "torch._int_mm"

    def transposed_codes(self) -> torch.Tensor:
        """The int8 weight [in, out], exactly as packed."""
        return self.weight_t if self.onednn is None else onednn.unpack(self.onednn)[0].t()

    def __reduce__(self):
        # Copies and pickles as the plain codes, packed again for the same kernel: oneDNN's layout has no storage
        # that copy or pickle can reach.
        return _repacked, (self.transposed_codes().contiguous(), self.kernel)


def _repacked(weight_t: torch.Tensor, kernel: str) -> IntegerWeight:
    if kernel == "onednn":
        return IntegerWeight(None, onednn.pack_integer(weight_t.t()))
    return IntegerWeight(weight_t, None)


def exact_in_fp32(weight_t: torch.Tensor) -> bool:
    """Whether every product of int8 codes with ``weight_t`` [in, out] is an integer below 2**24, so exact in fp32:
    ``|sum_k x_k w_k| <= 128 * sum_k |w_k|`` for each output."""
    column_sums = weight_t.abs().sum(dim=0, dtype=torch.int64)
    return _MAX_ABS_CODE * int(column_sums.max()) < _FP32_EXACT_INTEGER


def pack(weight_t: torch.Tensor) -> IntegerWeight:
    """``weight_t`` [in, out] (contiguous) for ``int8_linear``, on oneDNN where this CPU runs it and its output is exact."""
    use_onednn = onednn.unavailable_reason(capabilities.current()) is None and exact_in_fp32(weight_t)
    return _repacked(weight_t, "onednn" if use_onednn else "torch._int_mm")


def int8_linear(x: torch.Tensor, weight: IntegerWeight) -> torch.Tensor:
    """The exact integer ``x @ weight_t`` for int8 ``x`` [M, in]: fp32 from oneDNN (exact, see ``exact_in_fp32``) or
    int32 from ``torch._int_mm``, as each kernel writes it (a conversion would cost a pass)."""
    if weight.onednn is None:
        return torch._int_mm(x, weight.weight_t)
    return onednn.integer_product(x, weight.onednn)


def integer_bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact batched product, as fp32 holding the integer sums, of small integer tensors ``a`` [..., M, K] and ``b`` [..., K, N].

    Runs on fp32 ``matmul``: fp32 holds every integer up to 2**24 exactly, and no partial sum exceeds
    ``K * max|a| * max|b|``, which the callers keep below 2**24 (K=64 head dims of int8 for Q.K^T; up to
    512 keys of 9-bit probabilities times int8 values for P.V). Any summation order is then exact.
    """
    return torch.matmul(a.to(torch.float32), b.to(torch.float32))


def check_bmm_exact(depth: int, max_abs_a: int, max_abs_b: int, what: str) -> None:
    """Raise if ``integer_bmm`` could round for this reduction depth and operand range."""
    if depth * max_abs_a * max_abs_b > _FP32_EXACT_INTEGER:
        raise ValueError(
            f"{what}: {depth} x {max_abs_a} x {max_abs_b} exceeds 2**24, so the fp32 product would not be exact; "
            "the ibert scheme supports head sizes up to 1024 and sequences up to 512 tokens."
        )
