"""The integer matrix products of the integer-only (I-BERT) scheme; the only place that knows their CPU kernels.

Linear layers run ``torch._int_mm`` (int8 x int8 -> int32, oneDNN's VNNI kernel on x86) on a weight stored
transposed and contiguous, the layout that kernel is fastest with. The two attention products (Q.K^T and
probabilities.V) are small batched products that torch has no integer kernel for on CPU: they run on fp32
``bmm``, which is exact here because every operand and every partial sum is an integer below 2**24 in
magnitude (see ``integer_bmm``). Kept apart from the ``kernels`` package, which serves the dynamic int8 scheme.
"""

import torch

_FP32_EXACT_INTEGER = 2**24


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


def int8_linear(x: torch.Tensor, weight_t: torch.Tensor) -> torch.Tensor:
    """int32 ``x @ weight_t`` for int8 ``x`` [M, in] and the int8 weight stored transposed, ``weight_t`` [in, out]."""
    return torch._int_mm(x, weight_t)


def integer_bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact int32 batched product of small integer tensors ``a`` [..., M, K] and ``b`` [..., K, N].

    Runs on fp32 ``matmul``: fp32 holds every integer up to 2**24 exactly, and no partial sum exceeds
    ``K * max|a| * max|b|``, which the callers keep below 2**24 (K=64 head dims of int8 for Q.K^T; up to
    512 keys of 9-bit probabilities times int8 values for P.V). Any summation order is then exact.
    """
    return torch.matmul(a.to(torch.float32), b.to(torch.float32)).to(torch.int32)


def check_bmm_exact(depth: int, max_abs_a: int, max_abs_b: int, what: str) -> None:
    """Raise if ``integer_bmm`` could round for this reduction depth and operand range."""
    if depth * max_abs_a * max_abs_b > _FP32_EXACT_INTEGER:
        raise ValueError(
            f"{what}: {depth} x {max_abs_a} x {max_abs_b} exceeds 2**24, so the fp32 product would not be exact; "
            "the ibert scheme supports head sizes up to 1024 and sequences up to 512 tokens."
        )
