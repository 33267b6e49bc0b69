"""Quantized and reduced-precision modules. ``kernels`` (int8, bf16, the legacy torch.ao embedding op) and
``integer_kernels`` (integer-only I-BERT products) are the only places that know the CPU kernels;
``runtime`` puts a model's layers on a kernel plan and a compute dtype."""

from .bf16_linear import BFloat16Linear
from .int8_activation_linears import Int8PerTokenLinear, Int8StaticActivationLinear
from .int8_embedding import Int8Embedding
from .int8_linear import Int8DynamicLinear
from .int8_weight_only_linear import Int8WeightOnlyLinear

__all__ = ["BFloat16Linear", "Int8DynamicLinear", "Int8Embedding", "Int8PerTokenLinear", "Int8StaticActivationLinear",
           "Int8WeightOnlyLinear"]
