"""Weight-only int8 GEMM: int8 weights with one scale per output channel, float activations (no activation
quantization), on torch's ``_weight_int8pack_mm``.

The kernel takes bf16 activations and bf16 scales (its fp32 path measured 20-40x slower than an fp32 GEMM, so it
is never used): the input is rounded to bf16, products are summed in fp32 and the output is rounded to bf16.
Scales are chosen bf16-representable when quantizing (``bf16_representable_scales``), so the kernel multiplies by
exactly the fp32 scales the checkpoint stores. Decode steps are memory-bound: reading one byte per weight
instead of four is where the speed comes from.

Tall inputs (prefill, from ``DEQUANTIZED_MIN_ROWS`` rows) run a bf16 GEMM on the weight dequantized to bf16 for
the call instead: on SmolLM2 shapes with 256 rows, 1.5x faster than the kernel, whose cost grows with the rows
(AVX-512 VNNI, 2 threads). So do weights with an input width that is not a multiple of 16: the kernel's vector
path gives wrong results (NaN) for those in torch 2.13.

A single row under ``torch.compile`` (a bs1 decode step) is written as a multiply-and-sum instead, which inductor
turns into a fused loop streaming the int8 weight once. On SmolLM2-135M (docs/llm.md's decode profile, AMX Xeon,
2 threads) the kernel's 211 single-row GEMVs take 14.2 ms a step, while the whole compiled step, these loops
included, takes 12.0 ms. From two rows the kernel is as fast or faster. The products of bf16 and int8 are exact in fp32, so the two
differ only in the order of the fp32 sum.
"""

import dataclasses

import torch

name = "weight_only"
DEQUANTIZED_MIN_ROWS = 128
_KERNEL_WIDTH_MULTIPLE = 16
_STREAMS = 4


def unavailable_reason(capabilities) -> str | None:
    if not hasattr(torch.ops.aten, "_weight_int8pack_mm"):
        return f"torch {torch.__version__} has no torch.ops.aten._weight_int8pack_mm"
    if not capabilities.avx2:
        return "the weight-only int8 kernel needs AVX2"
    return None


def bf16_representable_scales(scales: torch.Tensor) -> torch.Tensor:
    """The smallest bf16 values >= ``scales`` (fp32), so that codes of |w| / scale stay within [-127, 127]."""
    rounded = scales.to(torch.bfloat16).to(torch.float32)
    below = rounded < scales
    if below.any():
        rounded[below] = torch.nextafter(rounded[below].to(torch.bfloat16), torch.tensor(float("inf"), dtype=torch.bfloat16)).float()
    return rounded


@dataclasses.dataclass(frozen=True)
class WeightOnlyInt8:
    weight_int8: torch.Tensor  # [out, in], contiguous
    weight_scale: torch.Tensor  # fp32 [out], bf16-representable
    kernel_scale: torch.Tensor  # the same values in bf16, as the kernel takes them


def pack(weight_int8: torch.Tensor, weight_scale: torch.Tensor) -> WeightOnlyInt8:
    if not torch.equal(weight_scale.to(torch.bfloat16).to(torch.float32), weight_scale):
        raise ValueError(
            "weight-only int8 scales must be bf16-representable (the kernel multiplies by bf16 scales); this weight "
            "was not quantized by optimum-int8's weight-only scheme."
        )
    # Copies: the tensors handed in may be views of a checkpoint file that the loader releases after packing.
    return WeightOnlyInt8(weight_int8.clone(memory_format=torch.contiguous_format),
                          weight_scale.to(torch.float32, copy=True), weight_scale.to(torch.bfloat16))


def unpack(packed: WeightOnlyInt8) -> tuple[torch.Tensor, torch.Tensor]:
    return packed.weight_int8, packed.weight_scale


def linear(x: torch.Tensor, packed: WeightOnlyInt8, bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """``x @ W.T + b`` with ``x`` in bf16, the result in ``out_dtype``."""
    rows = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
    if len(rows) == 1 and torch.compiler.is_compiling():
        y = _streamed_row(rows, packed)
    elif len(rows) >= DEQUANTIZED_MIN_ROWS or rows.shape[1] % _KERNEL_WIDTH_MULTIPLE:
        weight = packed.weight_int8.to(torch.bfloat16).mul_(packed.kernel_scale[:, None])
        y = torch.nn.functional.linear(rows, weight)
    else:
        y = torch.ops.aten._weight_int8pack_mm(rows, packed.weight_int8, packed.kernel_scale)
    y = y.to(out_dtype)
    if bias is not None:
        y = y.add_(bias) if out_dtype == bias.dtype else y.add_(bias.to(out_dtype))
    return y.view(*x.shape[:-1], y.shape[-1])


def _streamed_row(row: torch.Tensor, packed: WeightOnlyInt8) -> torch.Tensor:
    """One bf16 row times the int8 weight, as inductor fuses it into a single pass over the weight (see above).

    The weight's output channels are split into ``_STREAMS`` equal parts, each its own multiply-and-sum: inductor
    fuses the parts into one loop that reads ``_STREAMS`` rows at a time, where a single sum would run one row's
    dependent additions after another. Every output is the same sum in the same order either way.
    """
    x = row.to(torch.float32)[:, None, :]
    parts = [(x * part.to(torch.float32)).sum(-1) for part in packed.weight_int8.chunk(_STREAMS)]
    return (torch.cat(parts, dim=-1) * packed.weight_scale).to(torch.bfloat16)
