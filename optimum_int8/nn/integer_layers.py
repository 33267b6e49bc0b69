"""Integer-only (I-BERT) encoder modules: int8 weights, static activation scales, integer arithmetic throughout.

Each module's forward takes and returns integer tensors. Static activation scales (from calibration) live
in ``activation_scales``; ``prepare`` turns them, the int8 weights and the float biases / LayerNorm
parameters into the integer constants the forward pass uses (non-persistent buffers). Run ``prepare`` once
the weights are loaded; the state dict holds only the stored tensors, never the derived constants.

``forward(..., native=True)`` runs the elementwise stages on ``integer_native``'s row-fused loops (loaded by the
caller), ``native=False`` on the ``integer_ops`` reference; both give the same integers.

Submodule names follow BERT's (``attention.self.query``, ``attention.output.LayerNorm``, ...), so a
checkpoint's tensor names are the float model's module names with ``weight_int8`` / ``weight_scale``.
"""

import math

import torch
from torch import nn

from . import integer_kernels, integer_native
from . import integer_ops as ops
from .int8_linear import INT8_MAX, Int8DynamicLinear

ACCUMULATOR_OPERAND = 128 * INT8_MAX
MAX_SEQUENCE = 512


def check_activation_scales(owner: str, scales: dict, bits: dict) -> dict[str, float]:
    """Validate one module's activation scales (``{point: scale}``) against the points it needs."""
    if not isinstance(scales, dict) or set(scales) != set(bits):
        found = sorted(scales) if isinstance(scales, dict) else type(scales).__name__
        raise ValueError(f"{owner} needs activation scales {sorted(bits)}, got {found}")
    for point, scale in scales.items():
        if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"{owner} activation scale {point!r} must be a positive finite number, got {scale!r}")
    return {point: float(scales[point]) for point in bits}


class _ScaledModule(nn.Module):
    """A module with static activation scales (``{point: scale}``), one per integer tensor it produces."""

    scale_bits: dict[str, int] = {}

    def __init__(self, activation_scales: dict):
        super().__init__()
        self.activation_scales = check_activation_scales(type(self).__name__, activation_scales, self.scale_bits)

    def _constant(self, name: str, value) -> None:
        self.register_buffer(name, torch.as_tensor(value), persistent=False)


class IntegerLinear(nn.Module):
    """int8 weight [out, in] with symmetric per-output-channel scales and a float bias.

    ``forward`` returns the integer GEMM's exact accumulator (fp32 or int32, ``integer_kernels.int8_linear``); the
    bias and the rescaling are folded into whatever integer op consumes it. State dict: ``weight_int8`` (int8 [out, in]),
    ``weight_scale`` (fp32 [out]), ``bias`` (fp32 [out], optional), quantized exactly like
    ``Int8DynamicLinear``.
    """

    precision = "int8"
    marker_tensor = "weight_int8"
    state_dict_layout = staticmethod(Int8DynamicLinear.state_dict_layout)

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.register_buffer("weight_int8", torch.empty(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.empty(out_features, dtype=torch.float32, device=device))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, dtype=torch.float32, device=device), requires_grad=False)
        else:
            self.register_parameter("bias", None)
        self.packed = None  # the weight packed for the integer GEMM, by ``prepare``
        self.stored_in = None  # (packed weight, first column) that holds this module's codes once prepared

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: torch.Tensor | None) -> "IntegerLinear":
        """Quantize a float [out, in] weight (symmetric, per output channel, codes in [-127, 127])."""
        quantized = Int8DynamicLinear.from_weight(weight, bias)
        module = cls(weight.shape[1], weight.shape[0], bias=bias is not None)
        module.weight_int8 = quantized.weight_int8
        module.weight_scale = quantized.weight_scale
        if bias is not None:
            module.bias = quantized.bias
        return module

    @property
    def accumulator_bound(self) -> int:
        """Largest possible ``|x @ W.T|`` for int8 ``x``."""
        return self.in_features * ACCUMULATOR_OPERAND

    def float_bias(self) -> torch.Tensor:
        bias = self.bias if self.bias is not None else torch.zeros(self.out_features)
        return bias.detach().to(torch.float64)

    def input_ratio(self, input_scale: float, output_scale: float) -> torch.Tensor:
        """Per-channel ``accumulator scale / output_scale`` (float64)."""
        return input_scale * self.weight_scale.to(torch.float64) / output_scale

    def prepare(self) -> None:
        """Pack the weight for the integer GEMM (``weight_int8`` moves into it)."""
        self.packed = packed_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = integer_kernels.int8_linear(x.reshape(-1, self.in_features), self.packed)
        return out.view(*x.shape[:-1], self.out_features)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.stored_in is not None:  # prepared: the codes live in a packed weight, maybe shared with others
            packed, start = self.stored_in
            codes = packed.transposed_codes()[:, start:start + self.out_features]
            destination[prefix + "weight_int8"] = codes.t().contiguous()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, int8 per-channel"


def packed_weights(*linears: IntegerLinear) -> integer_kernels.IntegerWeight:
    """The weights of ``linears`` side by side as one [in, sum(out)] int8 matrix, packed for the integer GEMM. The
    modules keep no copy of their own (a second copy of every weight in memory): their state dicts read the codes
    back from the packed weight."""
    packed = integer_kernels.pack(torch.cat([linear.weight_int8.t() for linear in linears], dim=1).contiguous())
    start = 0
    for linear in linears:
        linear.weight_int8 = None
        linear.stored_in = (packed, start)
        start += linear.out_features
    return packed


class IntegerEmbedding(nn.Module):
    """int8 embedding table with one symmetric per-tensor scale (I-BERT's ``QuantEmbedding``).

    State dict: ``weight_int8`` (int8 [num, dim]) and ``weight_scale`` (fp32 [1]).
    """

    precision = "int8"
    marker_tensor = "weight_int8"

    def __init__(self, num_embeddings: int, embedding_dim: int, device=None):
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.register_buffer("weight_int8", torch.empty(num_embeddings, embedding_dim, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.empty(1, dtype=torch.float32, device=device))

    @staticmethod
    def state_dict_layout(num_embeddings: int, embedding_dim: int) -> dict:
        return {"weight_int8": (torch.int8, (num_embeddings, embedding_dim)), "weight_scale": (torch.float32, (1,))}

    @classmethod
    def from_float(cls, weight: torch.Tensor) -> "IntegerEmbedding":
        weight = weight.detach().to(torch.float32)
        module = cls(*weight.shape)
        scale = (weight.abs().amax() / INT8_MAX).clamp(min=1e-12).reshape(1)
        module.weight_int8 = torch.round(weight / scale).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
        module.weight_scale = scale
        return module

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(ids, self.weight_int8)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 per-tensor"


class IntegerLayerNorm(nn.Module):
    """LayerNorm on integers (i-sqrt), with its float ``weight``/``bias`` folded into the int8 requantization."""

    def __init__(self, normalized_shape: int, device=None):
        super().__init__()
        self.normalized_shape = normalized_shape
        self.weight = nn.Parameter(torch.empty(normalized_shape, device=device), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(normalized_shape, device=device), requires_grad=False)

    @classmethod
    def from_float(cls, module: nn.Module) -> "IntegerLayerNorm":
        layer_norm = cls(module.weight.shape[-1])
        layer_norm.weight = nn.Parameter(module.weight.detach().to(torch.float32, copy=True), requires_grad=False)
        layer_norm.bias = nn.Parameter(module.bias.detach().to(torch.float32, copy=True), requires_grad=False)
        return layer_norm

    def prepare(self, output_scale: float) -> None:
        for name, value in ops.layernorm_affine_constants(self.weight, self.bias, output_scale).items():
            self.register_buffer(name, value, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.requantize(ops.integer_layernorm(x), self.multiplier, self.offset, self.shift, 8)

    def after_sum(self, terms, offset: torch.Tensor, shift: torch.Tensor, bits: int, native: bool) -> torch.Tensor:
        """LayerNorm of ``requantize_sum(terms, offset, shift, bits)``; ``terms`` are ``(tensor, multiplier)`` pairs,
        at most one of them an accumulator (per-channel multipliers, first) and up to three int8 codes."""
        if not native:
            return self(ops.requantize_sum(terms, offset, shift, bits))
        accumulator, multiplier = terms[0] if terms[0][0].dtype != torch.int8 else (None, None)
        codes = [(x, int(m)) for x, m in terms if x.dtype == torch.int8]
        return integer_native.residual_layernorm(accumulator, multiplier, codes, offset, int(shift), bits, self)


class IntegerSelfAttention(_ScaledModule):
    """Q, K, V projections (one fused int8 GEMM), integer softmax, and the int8 context."""

    scale_bits = {"query": 8, "key": 8, "value": 8, "exp": ops.EXP_BITS, "context": 8}

    def __init__(self, hidden_size: int, num_heads: int, activation_scales: dict, device=None):
        super().__init__(activation_scales)
        self.num_heads = num_heads
        self.head_size = hidden_size // num_heads
        integer_kernels.check_bmm_exact(self.head_size, 128, 128, "attention scores Q.K^T")
        integer_kernels.check_bmm_exact(MAX_SEQUENCE, 2**ops.SOFTMAX_BITS, 128, "attention context P.V")
        self.query = IntegerLinear(hidden_size, hidden_size, device=device)
        self.key = IntegerLinear(hidden_size, hidden_size, device=device)
        self.value = IntegerLinear(hidden_size, hidden_size, device=device)
        self.qkv = None  # the three weights packed as one, by ``prepare``

    def prepare(self, input_scale: float) -> float:
        scales = self.activation_scales
        projections = (self.query, self.key, self.value)
        ratios = [p.input_ratio(input_scale, scales[n]) for p, n in zip(projections, ("query", "key", "value"))]
        biases = [p.float_bias() / scales[n] for p, n in zip(projections, ("query", "key", "value"))]
        ratio = torch.cat(ratios)
        shift = ops.dyadic_shift(float(ratio.max()), self.query.accumulator_bound)
        self.qkv = packed_weights(*projections)
        self._constant("qkv_multiplier", ops.dyadic(ratio, shift))
        self._constant("qkv_offset", ops.rounding_offset(shift, torch.cat(biases)))
        self._constant("qkv_shift", ops.as_constant(shift))
        score_scale = scales["query"] * scales["key"] / math.sqrt(self.head_size)
        softmax = ops.softmax_constants(score_scale, scales["exp"])
        for name, value in softmax.items():
            self._constant(f"softmax_{name}", value)
        self._constant("softmax_packed", torch.stack(list(softmax.values())))  # the native softmax's arguments
        self.register_buffer("softmax_exp_table", ops.exp_table(softmax), persistent=False)
        context_ratio = 2.0**-ops.SOFTMAX_BITS * scales["value"] / scales["context"]
        context_shift = ops.dyadic_shift(context_ratio, MAX_SEQUENCE * 2**ops.SOFTMAX_BITS * 128)
        self._constant("context_multiplier", ops.dyadic(context_ratio, context_shift))
        self._constant("context_offset", ops.rounding_offset(context_shift))
        self._constant("context_shift", ops.as_constant(context_shift))
        return scales["context"]

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None, native: bool = False) -> torch.Tensor:
        batch, length, hidden = x.shape
        accumulator = integer_kernels.int8_linear(x.reshape(batch * length, hidden), self.qkv)
        if native:
            return integer_native.self_attention(accumulator, self, keep, batch, length)
        qkv = ops.requantize(accumulator, self.qkv_multiplier, self.qkv_offset, self.qkv_shift, 8)
        query, key, value = qkv.view(batch, length, 3, self.num_heads, self.head_size).permute(2, 0, 3, 1, 4)
        scores = integer_kernels.integer_bmm(query, key.transpose(-1, -2))
        probabilities = ops.integer_softmax(
            scores, keep, self.softmax_x0, self.softmax_reciprocal, self.softmax_reciprocal_shift, self.softmax_b,
            self.softmax_c, self.softmax_multiplier, self.softmax_shift,
        )
        context = integer_kernels.integer_bmm(probabilities, value)
        context = ops.requantize(context, self.context_multiplier, self.context_offset, self.context_shift, 8)
        return context.transpose(1, 2).reshape(batch, length, hidden)


class IntegerResidualOutput(_ScaledModule):
    """``LayerNorm(dense(x) + residual)``: int8 GEMM, the sum requantized to 22 bits, integer LayerNorm, int8 out."""

    scale_bits = {"residual": 22, "output": 8}

    def __init__(self, in_features: int, hidden_size: int, activation_scales: dict, device=None):
        super().__init__(activation_scales)
        self.dense = IntegerLinear(in_features, hidden_size, device=device)
        self.LayerNorm = IntegerLayerNorm(hidden_size, device=device)

    def prepare(self, input_scale: float, residual_scale: float) -> float:
        residual_sum_scale = self.activation_scales["residual"]
        dense_ratio = self.dense.input_ratio(input_scale, residual_sum_scale)
        residual_ratio = residual_scale / residual_sum_scale
        shift = min(
            ops.dyadic_shift(float(dense_ratio.max()), self.dense.accumulator_bound, terms=2),
            ops.dyadic_shift(residual_ratio, 128, terms=2),
        )
        self.dense.prepare()
        self._constant("dense_multiplier", ops.dyadic(dense_ratio, shift))
        self._constant("residual_multiplier", ops.dyadic(residual_ratio, shift))
        self._constant("offset", ops.rounding_offset(shift, self.dense.float_bias() / residual_sum_scale))
        self._constant("shift", ops.as_constant(shift))
        self.LayerNorm.prepare(self.activation_scales["output"])
        return self.activation_scales["output"]

    def forward(self, x: torch.Tensor, residual: torch.Tensor, native: bool = False) -> torch.Tensor:
        terms = [(self.dense(x), self.dense_multiplier), (residual, self.residual_multiplier)]
        return self.LayerNorm.after_sum(terms, self.offset, self.shift, 22, native)


class IntegerIntermediate(_ScaledModule):
    """``GELU(dense(x))``: int8 GEMM, bias added in int32 units, i-GELU, requantized to int8."""

    scale_bits = {"output": 8}

    def __init__(self, hidden_size: int, intermediate_size: int, activation_scales: dict, device=None):
        super().__init__(activation_scales)
        self.dense = IntegerLinear(hidden_size, intermediate_size, device=device)

    def prepare(self, input_scale: float) -> float:
        accumulator_scale = input_scale * self.dense.weight_scale.to(torch.float64)
        bias = torch.round(self.dense.float_bias() / accumulator_scale).to(ops.WIDE)
        gelu, gelu_scale, gelu_bound = ops.gelu_constants(accumulator_scale, self.dense.accumulator_bound + int(bias.abs().max()))
        ratio = gelu_scale / self.activation_scales["output"]
        shift = ops.dyadic_shift(float(ratio.abs().max()), gelu_bound)
        self.dense.prepare()
        self._constant("bias_int", bias)
        for name, value in gelu.items():
            self._constant(f"gelu_{name}", value)
        self._constant("multiplier", ops.dyadic(ratio, shift))
        self._constant("offset", ops.rounding_offset(shift))
        self._constant("shift", ops.as_constant(shift))
        return self.activation_scales["output"]

    def forward(self, x: torch.Tensor, native: bool = False) -> torch.Tensor:
        accumulator = self.dense(x)
        if native:
            return integer_native.gelu_codes(
                accumulator, self.bias_int, self.gelu_b, self.gelu_c, self.gelu_one, self.gelu_erf_shift,
                self.multiplier, int(self.offset), int(self.shift),
            )
        gelu = ops.integer_gelu(
            accumulator.to(ops.WIDE) + self.bias_int, self.gelu_b, self.gelu_c, self.gelu_one, self.gelu_erf_shift
        )
        return ops.requantize(gelu, self.multiplier, self.offset, self.shift, 8)


class IntegerAttention(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, scales: dict[str, dict], device=None):
        super().__init__()
        self.self = IntegerSelfAttention(hidden_size, num_heads, scales["attention.self"], device=device)
        self.output = IntegerResidualOutput(hidden_size, hidden_size, scales["attention.output"], device=device)


class IntegerEncoderLayer(nn.Module):
    """One BERT encoder layer on integers: int8 in, int8 out.

    ``scales`` maps the submodule paths ``attention.self``, ``attention.output``, ``intermediate`` and
    ``output`` to their activation scales.
    """

    scaled_modules = {
        "attention.self": IntegerSelfAttention,
        "attention.output": IntegerResidualOutput,
        "intermediate": IntegerIntermediate,
        "output": IntegerResidualOutput,
    }

    def __init__(self, hidden_size: int, num_heads: int, intermediate_size: int, scales: dict[str, dict], device=None):
        super().__init__()
        self.attention = IntegerAttention(hidden_size, num_heads, scales, device=device)
        self.intermediate = IntegerIntermediate(hidden_size, intermediate_size, scales["intermediate"], device=device)
        self.output = IntegerResidualOutput(intermediate_size, hidden_size, scales["output"], device=device)

    def prepare(self, input_scale: float) -> float:
        context_scale = self.attention.self.prepare(input_scale)
        attention_scale = self.attention.output.prepare(context_scale, input_scale)
        intermediate_scale = self.intermediate.prepare(attention_scale)
        return self.output.prepare(intermediate_scale, attention_scale)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None, native: bool = False) -> torch.Tensor:
        attention = self.attention.output(self.attention.self(x, keep, native), x, native)
        return self.output(self.intermediate(attention, native), attention, native)
