"""A fallback Linear kept in bfloat16: half the bytes of fp32, on the CPU's bf16 matrix instructions."""

import torch
from torch import nn

from . import kernels
from .int8_linear import float_weight


class BFloat16Linear(nn.Module):
    """``y = x @ weight_bf16.T + bias`` computed in bfloat16, returned in the input's dtype.

    State dict: ``weight_bf16`` (bfloat16, [out, in], Linear orientation also for ``Conv1D``) and
    ``bias`` (bfloat16, [out], optional). The weight is named ``weight_bf16``, not ``weight``, so a
    reader without optimum-int8 reports it missing instead of loading a transposed ``Conv1D`` weight.
    Weights are converted once, when the module is built; only activations are cast per call.
    """

    precision = "bfloat16"
    marker_tensor = "weight_bf16"

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight_bf16 = nn.Parameter(
            torch.empty(out_features, in_features, dtype=torch.bfloat16, device=device), requires_grad=False
        )
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, dtype=torch.bfloat16, device=device), requires_grad=False)
        else:
            self.register_parameter("bias", None)

    @staticmethod
    def state_dict_layout(out_features: int, in_features: int, has_bias: bool) -> dict:
        """``{tensor name: (dtype, shape)}`` this module stores in a checkpoint."""
        layout = {"weight_bf16": (torch.bfloat16, (out_features, in_features))}
        if has_bias:
            layout["bias"] = (torch.bfloat16, (out_features,))
        return layout

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None) -> "BFloat16Linear":
        """Convert a float [out, in] weight; ``bias`` may still be on the meta device (loaded later)."""
        out_features, in_features = weight.shape
        module = cls(in_features, out_features, bias=False, device=weight.device)
        module.weight_bf16 = nn.Parameter(weight.detach().to(torch.bfloat16, copy=True), requires_grad=False)
        module.weight_bf16._is_hf_initialized = True
        if bias is not None:
            module.bias = nn.Parameter(bias.detach().to(torch.bfloat16, copy=True), requires_grad=False)
            module.bias._is_hf_initialized = getattr(bias, "_is_hf_initialized", False)
        return module

    @classmethod
    def from_float(cls, module: nn.Module) -> "BFloat16Linear":
        """Convert a loaded ``nn.Linear`` or transformers ``Conv1D`` (weight [in, out])."""
        return cls.from_weight(float_weight(module), module.bias)

    @property
    def weight(self) -> torch.Tensor:
        """The bf16 [out, in] weight, for code that inspects ``module.weight.dtype`` (e.g. T5)."""
        return self.weight_bf16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.bf16_linear(x.to(torch.bfloat16), self.weight_bf16, self.bias).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, bfloat16"
