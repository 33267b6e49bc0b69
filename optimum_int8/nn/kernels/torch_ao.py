"""torch.ao's quantized ops that only legacy INC checkpoints need: the uint8 embedding lookup and the static
int8 Linear of FX-quantized graphs (both on the fbgemm engine, as the old stack ran them)."""

import warnings

import torch


def pack_embedding(weight_uint8: torch.Tensor, row_scale: torch.Tensor, row_zero_point: torch.Tensor):
    """Prepack a uint8 [rows, dim] embedding table with per-row fp32 scales and float zero points.

    The layout of ``torch.ao``'s quantized ``nn.Embedding`` (``per_channel_affine_float_qparams``).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qweight = torch._make_per_channel_quantized_tensor(weight_uint8, row_scale.double(), row_zero_point.float(), 0)
        return torch.ops.quantized.embedding_bag_prepack(qweight)


def embedding(indices: torch.Tensor, packed) -> torch.Tensor:
    """fp32 rows of a packed uint8 table (the kernel needs contiguous indices)."""
    return torch.ops.quantized.embedding_byte(packed, indices.contiguous())


def static_linear(x: torch.Tensor, packed, input_scale: torch.Tensor, input_zero_point: torch.Tensor,
                  output_scale: float, output_zero_point: int) -> torch.Tensor:
    """``torch.ao`` static int8 Linear as FX-quantized graphs ran it: quantize the input with calibrated
    uint8 qparams, int8 GEMM with the output requantized to uint8, then dequantize to fp32. ``packed`` is
    an fbgemm packed weight (``fbgemm.pack``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qx = torch.quantize_per_tensor(x, input_scale, input_zero_point, torch.quint8)
        return torch.ops.quantized.linear(qx, packed, output_scale, output_zero_point).dequantize()
