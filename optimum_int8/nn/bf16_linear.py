"""A fallback Linear kept in bfloat16: half the bytes of fp32, on the CPU's bf16 matrix instructions."""

import torch
from torch import nn

from . import kernels
from .int8_linear import float_weight
from .packed_linear import PackedLinear


class BFloat16Linear(PackedLinear):
    """``y = x @ weight_bf16.T + bias`` computed in bfloat16, returned in the model's compute dtype.

    State dict: ``weight_bf16`` (bfloat16, [out, in], Linear orientation also for ``Conv1D``) and
    ``bias`` (bfloat16, [out], optional). The weight is named ``weight_bf16``, not ``weight``, so a
    reader without optimum-int8 reports it missing instead of loading a transposed ``Conv1D`` weight.

    Like ``Int8DynamicLinear``, the module runs packed: ``pack()`` moves the weight into the kernel's
    layout once (oneDNN's blocked bf16 layout where the CPU has bf16 instructions) and drops the plain
    tensor; the state dict unpacks it exactly. Only activations are cast per call, never the weight.
    """

    precision = "bfloat16"
    marker_tensor = "weight_bf16"
    bias_dtype = torch.bfloat16

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None):
        super().__init__(in_features, out_features, bias, device)
        self.weight_bf16 = nn.Parameter(
            torch.empty(out_features, in_features, dtype=torch.bfloat16, device=device), requires_grad=False
        )

    def __getattr__(self, name: str):
        # Once packed, ``weight_bf16`` is the kernel's weight (bf16, [out, in]); state_dict() gives the plain tensor.
        if name == "weight_bf16" and self.__dict__.get("_packed") is not None:
            return self._packed.tensor
        return super().__getattr__(name)

    @staticmethod
    def weight_layout(out_features: int, in_features: int) -> dict:
        return {"weight_bf16": (torch.bfloat16, (out_features, in_features))}

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None) -> "BFloat16Linear":
        """Convert a float [out, in] weight; the module comes back unpacked (call ``pack()`` to run it).

        ``bias`` may still be on the meta device (it is then loaded later, before packing).
        """
        out_features, in_features = weight.shape
        module = cls(in_features, out_features, bias=False, device=weight.device)
        module.weight_bf16 = nn.Parameter(weight.detach().to(torch.bfloat16, copy=True), requires_grad=False)
        module.weight_bf16._is_hf_initialized = True
        module.copy_bias(bias)
        return module

    @classmethod
    def from_float(cls, module: nn.Module) -> "BFloat16Linear":
        """Convert a loaded ``nn.Linear`` or transformers ``Conv1D`` (weight [in, out]) and pack it."""
        converted = cls.from_weight(float_weight(module), module.bias)
        converted.pack()
        return converted

    def pack(self) -> None:
        """Move the weight into the kernel's layout and drop the plain bf16 parameter."""
        weight = self._parameters.get("weight_bf16")
        if weight is None:
            raise RuntimeError("BFloat16Linear has no weight_bf16 to pack; it is already packed.")
        if weight.is_meta:
            raise RuntimeError("BFloat16Linear weights are still on the meta device; load them before packing.")
        self._packed = kernels.pack_bf16(weight)
        self.weight_bf16 = None

    def packed_state(self) -> dict[str, torch.Tensor]:
        return {"weight_bf16": self._packed.dense()}

    def _unpack(self) -> None:
        self.weight_bf16 = nn.Parameter(self._packed.dense(), requires_grad=False)
        self._packed = None

    @property
    def weight(self) -> torch.Tensor:
        """The bf16 [out, in] weight, for code that inspects ``module.weight.dtype`` (e.g. T5)."""
        return self.weight_bf16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_packed()
        return kernels.bf16_linear(x, self._packed, self.bias, self.compute_dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, bfloat16"
