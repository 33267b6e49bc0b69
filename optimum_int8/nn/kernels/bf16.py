"""bf16 GEMMs of the bf16 fallback modules, on oneDNN's prepacked bf16 weights where the CPU has bf16 units."""

import torch

from . import capabilities as cpu

# Without AMX, a bf16 GEMM with at least this many rows runs slower than fp32 (AVX-512 BF16 does as many
# multiply-adds per cycle as fp32 FMA, plus conversions), so it runs in fp32 on an fp32 copy of the weight.
BF16_FP32_MIN_ROWS = 64


class PackedBFloat16Weight:
    """A bf16 [out, in] weight in the layout the bf16 GEMM reads: oneDNN's blocked layout on CPUs with native
    bf16, else the plain tensor. Copies and pickles as the plain tensor (oneDNN tensors have no storage)."""

    def __init__(self, weight: torch.Tensor):
        capabilities = cpu.current()
        self.native = capabilities.native_bf16 and cpu.detect().native_bf16
        self.amx = capabilities.amx_bf16
        weight = weight.detach().to(torch.bfloat16)
        self.tensor = torch.ops.mkldnn._reorder_linear_weight(weight, 1) if self.native else weight.contiguous().clone()

    def dense(self) -> torch.Tensor:
        """The plain [out, in] bf16 weight, exactly."""
        return self.tensor.to_dense() if self.tensor.is_mkldnn else self.tensor

    def __reduce__(self):
        return type(self), (self.dense(),)


def pack_bf16(weight: torch.Tensor) -> PackedBFloat16Weight:
    """Prepack a bf16 [out, in] weight once, so that ``bf16_linear`` never reorders or casts it per call."""
    return PackedBFloat16Weight(weight)


def bf16_linear(x: torch.Tensor, packed: PackedBFloat16Weight, bias: torch.Tensor | None,
                out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """``x @ W.T + b`` with ``x`` rounded to bf16, products summed in fp32, the result rounded to bf16 and
    returned in ``out_dtype`` (default: ``x``'s dtype; docs/format.md). Short inputs (decoding) run oneDNN's
    bf16 GEMM on the prepacked weight; tall ones, on CPUs without AMX, run fp32 GEMM on the exactly upcast
    operands, which is faster there."""
    x_bf16 = x.to(torch.bfloat16)
    rows = x.numel() // x.shape[-1]
    if packed.native and (packed.amx or rows < BF16_FP32_MIN_ROWS):
        y = torch.ops.mkldnn._linear_pointwise(x_bf16, packed.tensor, bias, "none", [], "")
    else:
        y = torch.nn.functional.linear(
            x_bf16.float(), packed.dense().float(), bias.float() if bias is not None else None
        ).to(torch.bfloat16)
    return y.to(out_dtype or x.dtype)
