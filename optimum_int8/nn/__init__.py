"""Quantized modules; ``kernels`` is the only place that knows the CPU int8 ops."""

from .int8_linear import Int8DynamicLinear

__all__ = ["Int8DynamicLinear"]
