"""What the Linear replacements that run from a kernel-packed weight share (int8, bf16)."""

import torch
from torch import nn


class PackedLinear(nn.Module):
    """A Linear replacement whose weight runs in a kernel's packed layout.

    Subclasses hold their checkpoint tensors as plain parameters or buffers until ``pack()`` moves them into
    ``self._packed`` and drops them; ``packed_state()`` recovers them exactly, so the state dict is always
    what runs. The packed tensors' dtypes, shapes and devices are fixed by the checkpoint layout (``model.to()``
    does not reach them), which lets compiled decode steps skip checking them (``generation.PACKED_WEIGHT_GUARDS``).
    The bias stays a plain parameter in ``bias_dtype``. Outputs are in the input's dtype, or in
    ``compute_dtype`` when ``nn.runtime`` set one (bf16 compute: int8 kernels then write bf16 directly).
    """

    bias_dtype: torch.dtype

    def __init__(self, in_features: int, out_features: int, bias: bool, device=None):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, dtype=self.bias_dtype, device=device), requires_grad=False)
        else:
            self.register_parameter("bias", None)
        self._packed = None
        self.compute_dtype: torch.dtype | None = None

    def _apply(self, fn, recurse=True):
        """``model.to(dtype)`` and the like leave the bias in ``bias_dtype``: the checkpoint format stores it so,
        and the packed weight holds its own copy. A cast of the float tensors (``.to(torch.float16)``,
        ``.float()``) also drops the compute dtype ``nn.runtime`` set: the module then returns the dtype it is
        given, which is the one the rest of the model now computes in."""
        probe = torch.empty(0, dtype=self.compute_dtype or torch.float32)
        if fn(probe).dtype != probe.dtype:
            self.compute_dtype = None
        super()._apply(fn, recurse)
        if self.bias is not None and self.bias.dtype != self.bias_dtype and self.bias.is_floating_point():
            self.bias.data = self.bias.data.to(self.bias_dtype)
        return self

    @staticmethod
    def weight_layout(out_features: int, in_features: int) -> dict:
        raise NotImplementedError

    def extra_layout(self) -> dict:
        """``{tensor name: (dtype, shape)}`` of the plain buffers this module stores besides its weight and bias
        (a smoothing factor, calibrated activation scales); they stay plain tensors when packed."""
        return {}

    def layout(self) -> dict:
        """``{tensor name: (dtype, shape)}`` this module stores in a checkpoint."""
        return self.state_dict_layout(self.out_features, self.in_features, self.bias is not None) | self.extra_layout()

    @classmethod
    def state_dict_layout(cls, out_features: int, in_features: int, has_bias: bool) -> dict:
        """``{tensor name: (dtype, shape)}`` this module stores in a checkpoint."""
        layout = cls.weight_layout(out_features, in_features)
        if has_bias:
            layout["bias"] = (cls.bias_dtype, (out_features,))
        return layout

    def copy_bias(self, bias: torch.Tensor | None) -> None:
        """Take a copy of a float module's bias (it may still be on the meta device, loaded later).

        A copy: the float bias may be tied to another parameter (RoBERTa's lm_head.bias), and storage
        shared with it would make save_pretrained drop one of the two names.
        """
        if bias is not None:
            self.bias = nn.Parameter(bias.detach().to(self.bias_dtype, copy=True), requires_grad=False)
            self.bias._is_hf_initialized = getattr(bias, "_is_hf_initialized", False)

    @property
    def is_packed(self) -> bool:
        return self._packed is not None

    def pack(self) -> None:
        raise NotImplementedError

    def packed_state(self) -> dict[str, torch.Tensor]:
        """The checkpoint's weight tensors, recovered exactly from the packed weight."""
        raise NotImplementedError

    def _unpack(self) -> None:
        raise NotImplementedError

    def check_packed(self) -> None:
        if not self.is_packed:
            raise RuntimeError(
                f"{type(self).__name__} is not packed; load its weights (and call pack()) before running it."
            )

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        if not self.is_packed:
            super()._save_to_state_dict(destination, prefix, keep_vars)
            return
        for name, tensor in self.packed_state().items():
            destination[prefix + name] = tensor
        for name in self.extra_layout():
            tensor = self._buffers[name]
            destination[prefix + name] = tensor if keep_vars else tensor.detach()
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        was_packed = self.is_packed
        if was_packed:
            self._unpack()
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        if was_packed:
            self.pack()
