"""The W8A8 Linear layers whose activations are not quantized per tensor per call: per token, or with static
scales from calibration, optionally after SmoothQuant (Xiao et al., 2023) moved activation outliers into the
weights.

SmoothQuant divides input channel ``j`` by ``smooth_scale[j]`` and multiplies weight column ``j`` by it before
quantizing, which leaves the float product unchanged and flattens the activation's outlier channels. The layer
stores ``smooth_scale``, and the kernels multiply its input by the reciprocal block by block as they quantize it
(no separate pass over the activation), which works for every architecture; the quantized weight already holds
the multiplied columns.
"""

import torch

from . import kernels
from .int8_linear import Int8DynamicLinear


class _SmoothedInput:
    """What per-token and static layers share: an optional ``smooth_scale`` [in] buffer applied to the input."""

    def _init_smoothing(self, in_features: int, smoothed: bool, device) -> None:
        smooth_scale = torch.empty(in_features, dtype=torch.float32, device=device) if smoothed else None
        self.register_buffer("smooth_scale", smooth_scale)
        self._input_multipliers: dict[torch.dtype, torch.Tensor] = {}

    @classmethod
    def _quantized(cls, weight: torch.Tensor, bias, smooth_scale: torch.Tensor | None):
        """The unpacked module with the smoothed weight quantized per output channel (and ``smooth_scale`` kept)."""
        quantized = Int8DynamicLinear.from_weight(smoothed_weight(weight, smooth_scale), bias)
        module = cls(quantized.in_features, quantized.out_features, bias=False, smoothed=smooth_scale is not None)
        module.weight_int8, module.weight_scale, module.bias = quantized.weight_int8, quantized.weight_scale, quantized.bias
        if smooth_scale is not None:
            module.smooth_scale = smooth_scale.detach().to(torch.float32).clone()
        return module

    def _smoothing_layout(self) -> dict:
        return {} if self.smooth_scale is None else {"smooth_scale": (torch.float32, (self.in_features,))}

    def pack(self) -> None:
        super().pack()
        self._own_extras()
        self._input_multipliers = {}

    def _own_extras(self) -> None:
        """Own copies of the plain buffers: loaded ones may be views of a checkpoint file the loader releases."""
        for name in self.extra_layout():
            self._buffers[name] = self._buffers[name].clone()

    def input_multiplier(self, dtype: torch.dtype) -> torch.Tensor | None:
        """What smoothing multiplies an input of ``dtype`` by (the reciprocal of ``smooth_scale``), or None."""
        if self.smooth_scale is None:
            return None
        if torch.compiler.is_compiling():  # part of the graph: filling the cache would fail a guard on the next call
            return torch.reciprocal(self.smooth_scale).to(dtype)
        multiplier = self._input_multipliers.get(dtype)
        if multiplier is None:
            multiplier = torch.reciprocal(self.smooth_scale).to(dtype)
            self._input_multipliers[dtype] = multiplier
        return multiplier


def smoothed_weight(weight: torch.Tensor, smooth_scale: torch.Tensor | None) -> torch.Tensor:
    """The weight whose product with the smoothed input equals the float product: columns times ``smooth_scale``."""
    weight = weight.detach().to(torch.float32)
    return weight if smooth_scale is None else weight * smooth_scale.to(torch.float32)[None, :]


class Int8PerTokenLinear(_SmoothedInput, Int8DynamicLinear):
    """Dynamic W8A8 with one activation scale and zero point per token (row), over the row's [min, max] as
    torch.ao's dynamic quantization takes it per tensor: the standard scheme for decoders, whose activations differ
    by orders of magnitude between tokens. State dict: ``Int8DynamicLinear``'s, plus
    ``smooth_scale`` (float32, [in]) when smoothed."""

    activations = kernels.dispatch.PER_TOKEN

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, smoothed: bool = False):
        super().__init__(in_features, out_features, bias, device)
        self._init_smoothing(in_features, smoothed, device)

    @classmethod
    def from_weight(cls, weight, bias, smooth_scale: torch.Tensor | None = None) -> "Int8PerTokenLinear":
        return cls._quantized(weight, bias, smooth_scale)

    def extra_layout(self) -> dict:
        return self._smoothing_layout()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_packed()
        return self._packed.linear(x, self.compute_dtype or x.dtype, input_multiplier=self.input_multiplier(x.dtype))

    def extra_repr(self) -> str:
        return super().extra_repr() + (", smoothed" if self.smooth_scale is not None else "")


class Int8StaticActivationLinear(_SmoothedInput, Int8DynamicLinear):
    """W8A8 with one calibrated (static) uint8 scale and zero point for the input: no per-call range pass.
    State dict: ``Int8DynamicLinear``'s, plus ``input_scale`` (float32, [1]), ``input_zero_point`` (int32, [1],
    in [0, 255]), ``smooth_scale`` (float32, [in]) when smoothed, and ``output_scale`` (float32, [1]) and
    ``output_zero_point`` (int32, [1], in [0, 255]) when requantized.

    ``requantized``: the int8 GEMM's output is requantized to uint8 with calibrated output qparams and dequantized,
    as post-training-static FX graphs of legacy INC checkpoints ran every int8 Linear whose neighbours stayed in
    float. Only fbgemm's requantizing GEMM computes that rounding, so such a layer always runs on fbgemm."""

    activations = kernels.dispatch.STATIC

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, smoothed: bool = False,
                 requantized: bool = False):
        super().__init__(in_features, out_features, bias, device)
        self._init_smoothing(in_features, smoothed, device)
        self.register_buffer("input_scale", torch.empty(1, dtype=torch.float32, device=device))
        self.register_buffer("input_zero_point", torch.empty(1, dtype=torch.int32, device=device))
        self.register_buffer("output_scale", torch.empty(1, dtype=torch.float32, device=device) if requantized else None)
        self.register_buffer("output_zero_point", torch.empty(1, dtype=torch.int32, device=device) if requantized else None)
        if requantized:
            self.activations = kernels.dispatch.STATIC_REQUANTIZED

    @property
    def requantized(self) -> bool:
        return self.output_scale is not None

    @classmethod
    def from_weight(cls, weight, bias, input_qparams: tuple[float, int] | None = None,
                    smooth_scale: torch.Tensor | None = None) -> "Int8StaticActivationLinear":
        """``input_qparams``: the calibrated (scale, zero point) of the (smoothed) input; required."""
        if input_qparams is None:
            raise ValueError("a static int8 layer needs the calibrated (scale, zero point) of its input.")
        module = cls._quantized(weight, bias, smooth_scale)
        module.input_scale = torch.tensor([input_qparams[0]], dtype=torch.float32)
        module.input_zero_point = torch.tensor([input_qparams[1]], dtype=torch.int32)
        return module

    def extra_layout(self) -> dict:
        layout = {"input_scale": (torch.float32, (1,)), "input_zero_point": (torch.int32, (1,))}
        if self.requantized:
            layout |= {"output_scale": (torch.float32, (1,)), "output_zero_point": (torch.int32, (1,))}
        return layout | self._smoothing_layout()

    def pack(self) -> None:
        super().pack()
        self._qparams = (float(self.input_scale), int(self.input_zero_point))
        if self.requantized:
            self._qparams += (float(self.output_scale), int(self.output_zero_point))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_packed()
        return self._packed.linear(x, self.compute_dtype or x.dtype, self._qparams, self.input_multiplier(x.dtype))

    def extra_repr(self) -> str:
        return (super().extra_repr() + (", smoothed" if self.smooth_scale is not None else "")
                + (", output requantized" if self.requantized else ""))
