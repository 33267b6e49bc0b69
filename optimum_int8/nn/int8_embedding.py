"""Embedding lookup on a uint8 table with per-row float scale and zero point (legacy INC checkpoints)."""

import weakref

import torch
from torch import nn

from . import kernels


class Int8Embedding(nn.Module):
    """``torch.ao``'s quantized ``nn.Embedding``: uint8 rows, fp32 scale and float zero point per row.

    Optionally multiplies the looked-up rows by ``embed_scale``, as transformers' ``*ScaledWordEmbedding``
    classes do. The table lives only in the kernel's packed format, so ``weight`` is not a tensor;
    ``dequantized_weight()`` returns the fp32 rows exactly as the kernel produces them.

    optimum-int8's checkpoint format has no int8 embeddings: the state dict holds those exact fp32 rows
    as ``weight``, so a saved model is an ordinary float embedding that looks up bit-identical values.
    Modules that share this object (a tied embedding) save one tensor, which transformers de-duplicates.
    """

    def __init__(self, packed, num_embeddings: int, embedding_dim: int, embed_scale: float | None = None):
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.embed_scale = embed_scale
        self._packed = packed
        self._saved_weight = None

    @classmethod
    def from_uint8(cls, weight_uint8: torch.Tensor, row_scale: torch.Tensor, row_zero_point: torch.Tensor,
                   embed_scale: float | None = None) -> "Int8Embedding":
        num_embeddings, embedding_dim = weight_uint8.shape
        packed = kernels.pack_embedding(weight_uint8.contiguous(), row_scale, row_zero_point)
        return cls(packed, num_embeddings, embedding_dim, embed_scale)

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        rows = kernels.embedding(indices, self._packed)
        return rows if self.embed_scale is None else rows * self.embed_scale

    def dequantized_weight(self) -> torch.Tensor:
        """The fp32 [num_embeddings, embedding_dim] table the kernel looks rows up from."""
        return kernels.embedding(torch.arange(self.num_embeddings), self._packed)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        # One tensor per state dict, however many names this module has in it (tied embeddings).
        weight = self._saved_weight() if self._saved_weight is not None else None
        if weight is None:
            weight = self.dequantized_weight()
            self._saved_weight = weakref.ref(weight)
        destination[prefix + "weight"] = weight

    def extra_repr(self) -> str:
        scale = "" if self.embed_scale is None else f", embed_scale={self.embed_scale}"
        return f"{self.num_embeddings}, {self.embedding_dim}, uint8 per-row{scale}"
