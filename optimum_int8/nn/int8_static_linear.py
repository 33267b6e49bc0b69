"""Static int8 Linear: calibrated input and output quantization, as FX-quantized legacy INC models ran it."""

import torch
from torch import nn

from .kernels import fbgemm, static_linear


class StaticInt8Linear(nn.Module):
    """``dequantize(requantize(quantize(x; input qparams) @ W.T + b; output qparams))``.

    The input is quantized to uint8 with the scale and zero point calibrated by the old stack, the int8
    GEMM's result is requantized to uint8 with the calibrated output qparams and dequantized to fp32:
    exactly the ``quantize_per_tensor`` / ``quantized::linear`` / ``dequantize`` chain of a
    post-training-static FX graph whose neighbours stayed in float. Weights are int8 with symmetric
    per-output-channel scales, as in ``Int8DynamicLinear``.

    optimum-int8's checkpoint format stores dynamic int8 only, so this module refuses to be saved:
    re-expressing it as dynamic int8 changes the numerics and must be asked for
    (``convert_legacy_checkpoint(..., static_as_dynamic=True)``).
    """

    def __init__(self, packed, in_features: int, out_features: int, input_scale: float, input_zero_point: int,
                 output_scale: float, output_zero_point: int):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.register_buffer("input_scale", torch.tensor(input_scale, dtype=torch.float32), persistent=False)
        self.register_buffer("input_zero_point", torch.tensor(input_zero_point, dtype=torch.long), persistent=False)
        self.output_scale = float(output_scale)
        self.output_zero_point = int(output_zero_point)
        self._packed = packed

    @classmethod
    def from_int8(cls, weight_int8: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None,
                  input_scale: float, input_zero_point: int, output_scale: float,
                  output_zero_point: int) -> "StaticInt8Linear":
        out_features, in_features = weight_int8.shape
        packed = fbgemm.pack(weight_int8, weight_scale, bias)
        return cls(packed, in_features, out_features, input_scale, input_zero_point, output_scale, output_zero_point)

    def int8_weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(weight_int8, fp32 weight_scale, fp32 bias or None)``, as the kernel holds them."""
        weight_int8, weight_scale = fbgemm.unpack(self._packed)
        return weight_int8, weight_scale, fbgemm.unpack_bias(self._packed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = static_linear(x.to(torch.float32), self._packed, self.input_scale, self.input_zero_point,
                          self.output_scale, self.output_zero_point)
        return y.to(x.dtype)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        raise RuntimeError(
            f"{prefix.rstrip('.')} is a static int8 Linear from a legacy INC checkpoint; the optimum-int8 format "
            "stores dynamic int8 only. Convert with convert_legacy_checkpoint(..., static_as_dynamic=True) "
            "(`optimum-int8 convert --static-as-dynamic`): same int8 weights, activations quantized per call, "
            "outputs slightly different from the calibrated model."
        )

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel, static "
                f"input qparams ({self.input_scale.item():.6g}, {self.input_zero_point.item()}), "
                f"output qparams ({self.output_scale:.6g}, {self.output_zero_point})")
