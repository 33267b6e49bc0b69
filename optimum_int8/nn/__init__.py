"""Quantized and reduced-precision modules; ``kernels`` is the only place that knows the CPU int8 ops."""

from .bf16_linear import BFloat16Linear
from .int8_linear import Int8DynamicLinear

__all__ = ["BFloat16Linear", "Int8DynamicLinear"]
