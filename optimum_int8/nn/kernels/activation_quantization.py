"""uint8 quantization of an activation for the oneDNN int8 GEMM: per tensor (dynamic or static scales) or per row.

torch quantizes fp32 only, and its quantized tensors hand their codes out by copy (``int_repr``). Here the
codes are written once, in place: a bf16 activation is upcast in blocks of rows that stay in cache and
quantized into one preallocated quantized tensor, whose storage the GEMM then reads as plain uint8. On a
BART-large FFN activation (4 x 512 x 4096 bf16) that is 4x faster than upcasting the whole tensor, quantizing
and copying the codes out; a whole fresh fp32 copy of it (32 MiB) would also be mapped anew by glibc, page
by page, on every call.

Compiling this into one fused kernel with ``torch.compile`` measured faster alone, but inside a model its
OpenMP threads and ATen's fought over the two cores and greedy decoding ran 5x slower: not used
(docs/kernels.md). Where the user compiles the whole model, static scales use ``quantize_traceable`` instead,
which inductor fuses into the kernel before the GEMM.
"""

import math
import warnings

import numpy

import torch

_UPCAST_BLOCK_ELEMENTS = 1 << 19


def quantize(x: torch.Tensor, qmax: int) -> tuple[torch.Tensor, float, int]:
    """uint8 codes, scale and zero point of ``x`` per tensor, over [min(x, 0), max(x, 0)] as torch.ao's dynamic
    quantization chooses them (``qmax`` 127: 7-bit codes)."""
    low, high = (value.item() for value in torch.aminmax(x))
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(
            f"the input of an int8 Linear layer contains NaN or Inf (min {low}, max {high}); it cannot be quantized."
        )
    low, high = min(low, 0.0), max(high, 0.0)
    scale = (high - low) / qmax or 1.0
    zero_point = min(qmax, max(0, round(-low / scale)))
    return quantize_with(x, scale, zero_point), scale, zero_point


def quantize_with(x: torch.Tensor, scale: float, zero_point: int,
                  input_multiplier: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 codes of ``x`` with a given per-tensor scale and zero point (static activation scales), clamped.

    ``input_multiplier`` [in], in ``x``'s dtype: the codes are those of ``x * input_multiplier`` (SmoothQuant's
    smoothing), multiplied block by block in cache instead of in a separate pass over the whole activation."""
    rows = x.reshape(-1, x.shape[-1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch 2.13 deprecates quantized tensors; docs/kernels.md has the plan
        if x.dtype == torch.float32 and input_multiplier is None:
            quantized = torch.quantize_per_tensor(rows.contiguous(), scale, zero_point, torch.quint8)
        else:
            quantized = torch._empty_affine_quantized(rows.shape, scale=scale, zero_point=zero_point, dtype=torch.quint8)
            for block_rows, block in _fp32_row_blocks(rows, input_multiplier):
                quantized[block_rows].copy_(block)
    return _codes(quantized, rows.shape).view(x.shape)


def quantize_traceable(x: torch.Tensor, scale: float, zero_point: int,
                       input_multiplier: torch.Tensor | None = None) -> torch.Tensor:
    """``quantize_with`` in plain tensor ops, for compiled graphs, where inductor fuses it into the kernel that
    produces ``x``. torch's quantizer rounds ``x * (1 / scale) + zero_point`` computed with one fused multiply-add;
    here the product is rounded to fp32 before the addition, so a value within an fp32 rounding of a tie between two
    codes may land on the other one. Compiled, a bf16 ``x * input_multiplier`` stays in fp32 instead of being rounded
    to bf16 first, which moves a few percent of the codes by one."""
    if input_multiplier is not None:
        x = x * input_multiplier
    inverse_scale = 1.0 / torch.tensor(scale, dtype=torch.float32)
    return torch.round(x.to(torch.float32) * inverse_scale + zero_point).clamp(0, 255).to(torch.uint8)


def _fp32_row_blocks(rows: torch.Tensor, input_multiplier: torch.Tensor | None):
    """``(slice, fp32 block)`` over the rows of a 2-D ``rows``, in blocks that stay in cache: each block multiplied
    by ``input_multiplier`` in ``rows``' dtype (as a separate multiply would round it), then upcast exactly. Whole-
    activation temporaries are fresh allocations that glibc maps page by page on every call, which cost more than
    the arithmetic."""
    step = max(1, _UPCAST_BLOCK_ELEMENTS // max(1, rows.shape[1]))
    for start in range(0, rows.shape[0], step):
        block = rows[start:start + step]
        if input_multiplier is not None:
            block = block * input_multiplier
        yield slice(start, start + step), block.to(torch.float32)


_MIN_ROW_SCALE = 1e-12


def quantize_per_row(x: torch.Tensor, input_multiplier: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8 codes of each row of ``x`` with its own scale and zero point over [min(row, 0), max(row, 0)] (the
    range torch.ao's dynamic quantization takes per tensor, here per token), the fp32 row scales and the
    integer zero points (as fp32) [rows]. ``input_multiplier`` [in], in ``x``'s dtype: those of
    ``x * input_multiplier`` (SmoothQuant's smoothing), multiplied block by block.

    Each row is mapped to ``x / scale + zero_point`` in one pass and rounded by torch's per-tensor quantizer
    with scale 1: on a 256 x 576 activation 5x faster than ``quantize_per_channel`` (and ``aminmax`` along
    rows alone costs 10x a separate ``amin`` and ``amax``). Rows go in blocks that stay in cache
    (``_fp32_row_blocks``; on BART-large's encoder on an AMX CPU the default scheme went from 0.51x to 0.62x torch
    bf16's speed, docs/benchmarks.md); rows are independent, so the blocks change no code. Each block is upcast
    once: the row reductions run 2.5x faster on fp32 than on bf16, and a mixed-dtype addcmul casts on the fly at
    1.5x the cost (AMX CPU, 1024 x 768); the codes are the same."""
    rows = x.reshape(-1, x.shape[-1])
    scales = torch.empty(rows.shape[0], dtype=torch.float32)
    zero_points = torch.empty(rows.shape[0], dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = torch._empty_affine_quantized(rows.shape, scale=1.0, zero_point=0, dtype=torch.quint8)
        for block_rows, block in _fp32_row_blocks(rows, input_multiplier):
            block_scales, block_zero_points = row_qparams(block)
            scales[block_rows] = block_scales
            zero_points[block_rows] = block_zero_points
            quantized[block_rows].copy_(
                torch.addcmul(block_zero_points[:, None], block, torch.reciprocal(block_scales)[:, None]))
    return _codes(quantized, rows.shape), scales, zero_points


def row_qparams(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The fp32 scales and zero points (integers, as fp32) ``quantize_per_row`` uses for the rows of a 2-D ``rows``."""
    low = rows.amin(dim=1).float().clamp(max=0)
    high = rows.amax(dim=1).float().clamp(min=0)
    if not (torch.isfinite(low).all() and torch.isfinite(high).all()):
        raise ValueError("the input of an int8 Linear layer contains NaN or Inf; it cannot be quantized.")
    scales = ((high - low) / 255).clamp(min=_MIN_ROW_SCALE)
    return scales, torch.round(-low / scales).clamp(0, 255)


def single_row_qparams(row: torch.Tensor) -> tuple[float, int]:
    """``row_qparams`` of a single row, computed on two scalars in float32 like the tensor path (same results):
    a decode step's per-token layer would otherwise spend most of its time in a dozen one-element tensor ops."""
    low, high = float(row.min()), float(row.max())
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"the input of an int8 Linear layer contains NaN or Inf (min {low}, max {high}); it cannot be quantized.")
    low, high = numpy.float32(min(low, 0.0)), numpy.float32(max(high, 0.0))
    scale = max((high - low) / numpy.float32(255), numpy.float32(_MIN_ROW_SCALE))
    return float(scale), int(min(max(numpy.rint(-low / scale), 0), 255))


def _codes(quantized: torch.Tensor, shape) -> torch.Tensor:
    """The codes as a plain uint8 tensor on the quantized tensor's own storage: no copy (``int_repr`` copies)."""
    return torch.empty(0, dtype=torch.uint8).set_(quantized.untyped_storage(), 0, shape, shape[1:] + (1,))
