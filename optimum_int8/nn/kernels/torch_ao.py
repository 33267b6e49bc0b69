"""torch.ao's quantized op that only legacy INC checkpoints need: the uint8 embedding lookup (on the fbgemm engine,
as the old stack ran it). Their static int8 Linear is fbgemm's ``linear_static_requantized``."""

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
