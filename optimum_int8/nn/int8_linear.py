"""Dynamic int8 Linear: int8 weights with symmetric per-output-channel scales, activations per call."""

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from . import kernels
from .packed_linear import PackedLinear

INT8_MAX = 127
_MIN_SCALE = 1e-12


def float_weight(module: nn.Module) -> torch.Tensor:
    """The [out, in] weight of an ``nn.Linear``, or of a transformers ``Conv1D`` (stored [in, out])."""
    return module.weight.t() if isinstance(module, Conv1D) else module.weight


class DequantizedWeight:
    """What ``Int8DynamicLinear.weight`` returns: call it for the dequantized fp32 weight.

    It carries transformers' ``_is_hf_initialized`` flag so that weight-init code run after loading
    (e.g. GPT-2's scaled ``init.normal_(c_proj.weight)``) leaves int8 modules alone.
    """

    _is_hf_initialized = True

    def __init__(self, module: "Int8DynamicLinear"):
        self._module = module

    def __call__(self) -> torch.Tensor:
        return self._module.dequantized_weight()


class Int8DynamicLinear(PackedLinear):
    """``y = x @ (weight_int8 * weight_scale[:, None]).T + bias`` on the CPU int8 kernels.

    State dict: ``weight_int8`` (int8, [out, in]), ``weight_scale`` (float32, [out]) and ``bias``
    (float32, [out], optional). At run time the weight lives only in the packed kernel format; the
    state dict tensors are unpacked from it on save, so they are always exactly what runs.

    ``weight`` is not a tensor, on purpose: code such as T5's feed-forward probes
    ``isinstance(module.weight, torch.Tensor)`` to pick a dtype and must not mistake int8 codes for a
    float weight. ``module.weight()`` returns the dequantized fp32 weight, like ``torch.ao``'s modules.
    """

    precision = "int8"
    marker_tensor = "weight_int8"
    bias_dtype = torch.float32
    # How the input is quantized: the kernel plan of the layer is chosen for it.
    activations = kernels.dispatch.PER_TENSOR

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None):
        super().__init__(in_features, out_features, bias, device)
        self.register_buffer("weight_int8", torch.empty(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.empty(out_features, dtype=torch.float32, device=device))
        # Which kernel(s) run it; None: this CPU's default plan, decided when packing.
        self.kernel_plan: kernels.KernelPlan | None = None

    @staticmethod
    def weight_layout(out_features: int, in_features: int) -> dict:
        return {"weight_int8": (torch.int8, (out_features, in_features)), "weight_scale": (torch.float32, (out_features,))}

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None) -> "Int8DynamicLinear":
        """Quantize a float [out, in] weight; the module comes back unpacked (call ``pack()`` to run it).

        ``bias`` may still be on the meta device (it is then loaded later, before packing).
        """
        weight = weight.detach().to(torch.float32)
        if not torch.isfinite(weight).all():
            raise ValueError(
                f"weight of shape {tuple(weight.shape)} contains NaN or Inf and cannot be quantized; "
                "keep this module in fp32 with Int8Config(modules_in_fp32=[...])."
            )
        out_features, in_features = weight.shape
        qmodule = cls(in_features, out_features, bias=False, device=weight.device)
        weight_scale = (weight.abs().amax(dim=1) / INT8_MAX).clamp(min=_MIN_SCALE)
        qmodule.weight_int8 = torch.round(weight / weight_scale[:, None]).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
        qmodule.weight_scale = weight_scale
        qmodule.copy_bias(bias)
        return qmodule

    @classmethod
    def from_float(cls, module: nn.Module) -> "Int8DynamicLinear":
        """Quantize a loaded fp32 ``nn.Linear`` or transformers ``Conv1D`` (weight [in, out]) and pack it."""
        if type(module) not in (nn.Linear, Conv1D):
            raise TypeError(f"Int8DynamicLinear.from_float expects nn.Linear or Conv1D, got {type(module).__name__}")
        qmodule = cls.from_weight(float_weight(module), module.bias)
        qmodule.pack()
        return qmodule

    def pack(self) -> None:
        """Move the weight into the kernel's packed format and drop the plain int8 buffers."""
        if self.weight_int8 is None:
            raise RuntimeError("Int8DynamicLinear has no weight_int8 to pack; it is already packed.")
        if self.weight_int8.is_meta:
            raise RuntimeError("Int8DynamicLinear weights are still on the meta device; load them before packing.")
        if self.kernel_plan is None:
            self.kernel_plan = kernels.plan(activations=self.activations)
        self._packed = kernels.PackedInt8Weight(self.weight_int8, self.weight_scale, self.bias, self.kernel_plan)
        self.weight_int8 = None
        self.weight_scale = None

    def use_kernel(self, plan: "kernels.KernelPlan") -> None:
        """Run on ``plan`` from now on (repacking the weight if it is packed for another plan)."""
        if plan == self.kernel_plan:
            return
        was_packed = self.is_packed
        if was_packed:
            self._unpack()
        self.kernel_plan = plan
        if was_packed:
            self.pack()

    def packed_state(self) -> dict[str, torch.Tensor]:
        weight_int8, weight_scale = self._packed.unpack()
        return {"weight_int8": weight_int8, "weight_scale": weight_scale}

    def _unpack(self) -> None:
        self.weight_int8, self.weight_scale = self._packed.unpack()
        self._packed = None

    @property
    def weight(self) -> "DequantizedWeight":
        return DequantizedWeight(self)

    def dequantized_weight(self) -> torch.Tensor:
        """The dequantized fp32 weight [out, in] (what the kernel multiplies by, up to activation rounding)."""
        weight_int8, weight_scale = self._packed.unpack() if self.is_packed else (self.weight_int8, self.weight_scale)
        return weight_int8.to(torch.float32) * weight_scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_packed()
        return self._packed.linear(x, self.compute_dtype or x.dtype)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        for name, dtype in (("weight_int8", torch.int8), ("weight_scale", torch.float32)):
            tensor = state_dict.get(prefix + name)
            if tensor is not None and tensor.dtype != dtype:
                error_msgs.append(f"{prefix}{name}: expected {dtype}, got {tensor.dtype}")
                return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        kernel = f", {self.kernel_plan.describe()}" if self.kernel_plan is not None else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"int8 per-channel{kernel}" + (f", compute {self.compute_dtype}" if self.compute_dtype else ""))
