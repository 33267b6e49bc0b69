"""Per-tensor uint8 quantization of an activation, for the oneDNN int8 GEMM.

torch quantizes fp32 tensors only, so a bf16 activation is upcast first. Upcast whole, a large one writes a
fresh fp32 buffer on every call (32 MiB for a BART-large FFN's 2048 x 4096, which glibc maps anew, page by
page); upcast in blocks of rows, the copy stays in cache and quantizing costs about a third as much.

Compiling this into one fused kernel with ``torch.compile`` measured 2.5x faster alone, but inside a model
its OpenMP threads and ATen's fought over the two cores and greedy decoding ran 5x slower: not used
(docs/kernels.md).
"""

import math
import warnings

import torch

_UPCAST_BLOCK_ELEMENTS = 1 << 20


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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch 2.13 deprecates quantized tensors; docs/kernels.md has the plan
        if x.dtype == torch.float32:
            return torch.quantize_per_tensor(x, scale, zero_point, torch.quint8).int_repr(), scale, zero_point
        rows = x.reshape(-1, x.shape[-1])
        codes = torch.empty(rows.shape, dtype=torch.uint8)
        step = max(1, _UPCAST_BLOCK_ELEMENTS // rows.shape[1])
        for start in range(0, rows.shape[0], step):
            block = rows[start:start + step].float()
            codes[start:start + step].copy_(torch.quantize_per_tensor(block, scale, zero_point, torch.quint8).int_repr())
    return codes.view(x.shape), scale, zero_point
