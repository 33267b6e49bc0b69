"""oneDNN's int8 GEMM (``torch.ops.onednn.qlinear_pointwise``, the op torch's x86 inductor backend emits):
the kernel for prefill-shaped inputs, on AMX tiles where the CPU has them and on AVX-512 VNNI otherwise.

The weight is reordered once into oneDNN's blocked layout. Each call quantizes the activation per tensor to
uint8 (asymmetric, the same scheme as fbgemm's dynamic Linear) with eager torch ops, and the kernel writes
its result directly in the compute dtype (bf16 or fp32) with the bias added, so no fp32 output is written
and cast when the model computes in bf16.
"""

import dataclasses
import math

import torch

name = "onednn"
_UPCAST_BLOCK_ELEMENTS = 1 << 20


@dataclasses.dataclass(frozen=True)
class OnednnWeight:
    weight: torch.Tensor  # oneDNN tensor, the [in, out] int8 weight in the kernel's layout
    weight_scale: torch.Tensor  # fp32 [out]
    weight_zero_point: torch.Tensor  # zeros, int64 [out] (symmetric weights)
    bias: torch.Tensor | None  # fp32 [out]


def unavailable_reason(capabilities) -> str | None:
    if not hasattr(torch.ops.onednn, "qlinear_pointwise"):
        return f"torch {torch.__version__} has no torch.ops.onednn.qlinear_pointwise"
    if not torch.backends.mkldnn.is_available():
        return f"torch {torch.__version__} was built without oneDNN"
    if not capabilities.avx512_vnni:
        return "oneDNN's int8 GEMM is fast only with AVX-512 VNNI or AMX"
    return None


def pack(weight_int8: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None) -> OnednnWeight:
    return OnednnWeight(
        torch.ops.onednn.qlinear_prepack(weight_int8.contiguous(), None),
        weight_scale.to(torch.float32).contiguous(),
        torch.zeros(weight_scale.shape, dtype=torch.long),
        None if bias is None else bias.detach().to(torch.float32),
    )


def unpack(packed: OnednnWeight) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight_int8, fp32 weight_scale), exactly as packed (oneDNN holds the weight transposed)."""
    return packed.weight.to_dense().t().contiguous(), packed.weight_scale.clone()


def quantize_activation(x: torch.Tensor, reduce_range: bool) -> tuple[torch.Tensor, float, int]:
    """uint8 codes, scale and zero point of ``x`` per tensor, over [min(x, 0), max(x, 0)] as torch.ao's
    dynamic quantization chooses them (7-bit codes with ``reduce_range``)."""
    qmax = 127 if reduce_range else 255
    low, high = (value.item() for value in torch.aminmax(x))
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(
            f"the input of an int8 Linear layer contains NaN or Inf (min {low}, max {high}); it cannot be quantized."
        )
    low, high = min(low, 0.0), max(high, 0.0)
    scale = (high - low) / qmax or 1.0
    zero_point = min(qmax, max(0, round(-low / scale)))
    if x.dtype == torch.float32:
        return torch.quantize_per_tensor(x, scale, zero_point, torch.quint8).int_repr(), scale, zero_point
    # torch quantizes fp32 only. Upcasting a bf16 activation whole writes a large fresh fp32 buffer (2048 x 4096
    # in a BART-large FFN: 32 MiB, which glibc maps anew, page by page, on every call); in blocks of rows the
    # copy stays in cache and the quantization costs a third as much (docs/kernels.md).
    rows = x.reshape(-1, x.shape[-1])
    codes = torch.empty(rows.shape, dtype=torch.uint8)
    step = max(1, _UPCAST_BLOCK_ELEMENTS // rows.shape[1])
    for start in range(0, rows.shape[0], step):
        block = rows[start:start + step].float()
        codes[start:start + step].copy_(torch.quantize_per_tensor(block, scale, zero_point, torch.quint8).int_repr())
    return codes.view(x.shape), scale, zero_point


def linear(x: torch.Tensor, packed: OnednnWeight, reduce_range: bool, out_dtype: torch.dtype) -> torch.Tensor:
    codes, scale, zero_point = quantize_activation(x, reduce_range)
    return torch.ops.onednn.qlinear_pointwise(
        codes, scale, zero_point, packed.weight, packed.weight_scale, packed.weight_zero_point, packed.bias,
        1.0, 0, out_dtype, "none", [], "",
    )
