"""A packed int8 weight: one layer's int8 codes in the layout of the backend(s) its plan runs."""

import torch

from .dispatch import BACKENDS, PER_TOKEN, KernelPlan, linear_function


class PackedInt8Weight:
    """The weight of one int8 Linear layer, packed for its ``KernelPlan``.

    The plan's main backend is packed at once; the backend for short inputs (decode steps) is packed from
    it on the first short call, so a layer that never sees one (an encoder's) holds one copy. Copies and
    pickles as the plain codes, scales and bias (kernel layouts have no portable storage).
    """

    def __init__(self, weight_int8: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None,
                 plan: KernelPlan):
        self.plan = plan
        self.out_features, self.in_features = weight_int8.shape
        self._bias = None if bias is None else bias.detach().to(torch.float32)
        self._forms = {plan.backend: BACKENDS[plan.backend].pack(weight_int8, weight_scale, self._bias)}

    def unpack(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight_int8, fp32 weight_scale), exactly as packed."""
        backend, packed = next(iter(self._forms.items()))
        return BACKENDS[backend].unpack(packed)

    def _form(self, backend: str):
        packed = self._forms.get(backend)
        if packed is None:
            packed = BACKENDS[backend].pack(*self.unpack(), self._bias)
            self._forms[backend] = packed
        return packed

    def linear(self, x: torch.Tensor, out_dtype: torch.dtype, static_qparams: tuple[float, int] | None = None,
               input_multiplier: torch.Tensor | None = None) -> torch.Tensor:
        """``x @ W.T + b`` in ``out_dtype``, on the backend the plan picks for this many rows, quantizing ``x`` with
        the plan's activation granularity (``static_qparams``: the calibrated scale and zero point, followed by the
        output's when the plan requantizes the output). Per-token and static activations are those of
        ``x * input_multiplier`` (SmoothQuant), which the kernels multiply as they quantize."""
        rows = x.numel() // self.in_features if self.in_features else 0
        if rows == 0:
            return x.new_empty((*x.shape[:-1], self.out_features), dtype=out_dtype)
        backend = self.plan.backend_for(rows)
        function = linear_function(backend, self.plan.activations)
        if static_qparams is not None:
            return function(x, self._form(backend), *static_qparams, out_dtype, input_multiplier)
        if self.plan.activations == PER_TOKEN:
            return function(x, self._form(backend), out_dtype, input_multiplier)
        return function(x, self._form(backend), self.plan.reduce_range, out_dtype)

    def backends(self) -> list[str]:
        """The backends packed so far."""
        return list(self._forms)

    def __reduce__(self):
        return type(self), (*self.unpack(), self._bias, self.plan)
