"""Weight-only int8 Linear: int8 weights with per-output-channel scales, float (bf16-rounded) activations."""

import torch

from .int8_linear import Int8DynamicLinear
from .kernels import weight_only


class Int8WeightOnlyLinear(Int8DynamicLinear):
    """``y = bf16(x) @ (weight_int8 * weight_scale[:, None]).T + bias``, on ``kernels.weight_only``.

    No activation is quantized, so it is as accurate as a bf16 model with int8-rounded weights, and a decode step
    reads a quarter of an fp32 model's weight bytes. Same state dict as ``Int8DynamicLinear``; the scales are
    bf16-representable (the kernel's scale dtype), rounded up so that codes stay within [-127, 127].
    """

    activations = None

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None) -> "Int8WeightOnlyLinear":
        weight = weight.detach().to(torch.float32)
        quantized = Int8DynamicLinear.from_weight(weight, bias)
        scale = weight_only.bf16_representable_scales(quantized.weight_scale)
        module = cls(quantized.in_features, quantized.out_features, bias=False, device=weight.device)
        module.weight_int8 = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
        module.weight_scale = scale
        module.bias = quantized.bias
        return module

    def pack(self) -> None:
        if self.weight_int8 is None:
            raise RuntimeError("Int8WeightOnlyLinear has no weight_int8 to pack; it is already packed.")
        if self.weight_int8.is_meta:
            raise RuntimeError("Int8WeightOnlyLinear weights are still on the meta device; load them before packing.")
        self._packed = weight_only.pack(self.weight_int8, self.weight_scale)
        self.weight_int8 = None
        self.weight_scale = None

    def use_kernel(self, plan) -> None:
        """The weight-only GEMM has one kernel on every CPU: an int8 kernel plan does not apply."""

    def packed_state(self) -> dict[str, torch.Tensor]:
        weight_int8, weight_scale = weight_only.unpack(self._packed)
        return {"weight_int8": weight_int8, "weight_scale": weight_scale}

    def _unpack(self) -> None:
        self.weight_int8, self.weight_scale = weight_only.unpack(self._packed)
        self._packed = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_packed()
        return weight_only.linear(x, self._packed, self.bias, self.compute_dtype or x.dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                "int8 weight-only, bf16 activations" + (f", compute {self.compute_dtype}" if self.compute_dtype else ""))
