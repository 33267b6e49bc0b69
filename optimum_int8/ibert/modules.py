"""The two modules that replace a BERT/RoBERTa/I-BERT base model's ``embeddings`` and ``encoder``.

The base model's own forward still runs: it calls ``embeddings``, builds the attention mask and calls
``encoder``, then the task head runs in float on the encoder output. The hand-off between the two modules
goes through that forward as a float tensor holding int8 codes times the embedding output scale; the encoder
recovers the codes exactly (|code| <= 128, so the float rounding error is below 2**-16 of a step).
"""

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPastAndCrossAttentions

from ..nn import integer_ops as ops
from ..nn.integer_layers import IntegerEmbedding, IntegerEncoderLayer, IntegerLayerNorm, _ScaledModule
from .architecture import EncoderFamily, check_sequence_length
from .compilation import fast_path_ready

EMBEDDING_TABLES = ("word_embeddings", "position_embeddings", "token_type_embeddings")


def dequantize(codes: torch.Tensor, scale: float) -> torch.Tensor:
    return codes.to(torch.float32) * scale


class IntegerEmbeddings(_ScaledModule):
    """Word + position + token-type lookups in int8, summed to 16 bits, integer LayerNorm, int8 out.

    Returns the dequantized float hidden states (and, for I-BERT, their scale) to the base model's forward.
    ``fast_path``: run on the native integer kernels (``compilation``), the default.
    """

    scale_bits = {"sum": 16, "output": 8}
    fast_path = True

    def __init__(self, config, family: EncoderFamily, activation_scales: dict, device=None):
        super().__init__(activation_scales)
        self.word_embeddings = IntegerEmbedding(config.vocab_size, config.hidden_size, device=device)
        self.position_embeddings = IntegerEmbedding(config.max_position_embeddings, config.hidden_size, device=device)
        self.token_type_embeddings = IntegerEmbedding(config.type_vocab_size, config.hidden_size, device=device)
        self.LayerNorm = IntegerLayerNorm(config.hidden_size, device=device)
        self.padding_idx = config.pad_token_id if family.padded_positions else None
        self.return_scale = family.embeddings_return_scale

    def prepare(self) -> float:
        tables = [getattr(self, name) for name in EMBEDDING_TABLES]
        ratios = [float(table.weight_scale) / self.activation_scales["sum"] for table in tables]
        shift = min(ops.dyadic_shift(ratio, 128, terms=len(tables)) for ratio in ratios)
        self._constant("multipliers", torch.stack([ops.dyadic(ratio, shift) for ratio in ratios]))
        self._constant("offset", ops.rounding_offset(shift))
        self._constant("shift", ops.as_constant(shift))
        self.LayerNorm.prepare(self.activation_scales["output"])
        return self.activation_scales["output"]

    def _position_ids(self, input_ids: torch.Tensor, cache_length: int) -> torch.Tensor:
        if self.padding_idx is None:
            positions = torch.arange(cache_length, cache_length + input_ids.shape[1], device=input_ids.device)
            return positions.expand_as(input_ids)
        not_padding = input_ids.ne(self.padding_idx).long()
        return (torch.cumsum(not_padding, dim=1) + cache_length) * not_padding + self.padding_idx

    def forward(self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None, cache_length=0):
        if input_ids is None or inputs_embeds is not None:
            raise ValueError("integer-only models embed token ids themselves: pass input_ids, not inputs_embeds.")
        check_sequence_length(input_ids.shape[-1])
        if position_ids is None:
            position_ids = self._position_ids(input_ids, cache_length)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        hidden = _embed(self, input_ids, position_ids, token_type_ids, native=self.fast_path and fast_path_ready())
        if self.return_scale:
            return hidden, torch.tensor([self.activation_scales["output"]])
        return hidden


def _embed(embeddings: IntegerEmbeddings, input_ids, position_ids, token_type_ids, native: bool) -> torch.Tensor:
    lookups = (embeddings.word_embeddings(input_ids), embeddings.position_embeddings(position_ids),
               embeddings.token_type_embeddings(token_type_ids))
    terms = list(zip(lookups, embeddings.multipliers))
    codes = embeddings.LayerNorm.after_sum(terms, embeddings.offset, embeddings.shift, 16, native)
    return dequantize(codes, embeddings.activation_scales["output"])



def keep_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """The boolean "may attend" mask from whatever mask the base model built (None, bool, additive float, 2-D)."""
    if attention_mask is None:
        return None
    if attention_mask.dim() == 2:
        return attention_mask.bool()[:, None, None, :]
    keep = attention_mask if attention_mask.dtype == torch.bool else attention_mask > torch.finfo(attention_mask.dtype).min / 2
    if keep.shape[-2] > 1 and bool((keep == keep[..., :1, :]).all()):
        keep = keep[..., :1, :]  # a padding mask, the same for every query: broadcast one row (cheaper to apply)
    return keep


class IntegerInput(nn.Module):
    """Recovers the int8 codes from the float hand-off tensor (codes times the embedding output scale)."""

    def __init__(self):
        super().__init__()
        self.scale = None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return ops.saturate(torch.round(hidden_states / self.scale), 8)


class IntegerEncoder(nn.Module):
    """The stack of ``IntegerEncoderLayer``: quantizes its input once, runs every layer on int8, dequantizes once.

    ``scales`` maps paths relative to this module (``layer.0.attention.self``, ...) to activation scales.
    ``fast_path``: run the layers on the native integer kernels (``compilation``), the default.
    """

    fast_path = True

    def __init__(self, config, scales: dict[str, dict], device=None):
        super().__init__()
        self.input = IntegerInput()
        self.layer = nn.ModuleList(
            IntegerEncoderLayer(
                config.hidden_size, config.num_attention_heads, config.intermediate_size,
                {name: scales[f"layer.{index}.{name}"] for name in IntegerEncoderLayer.scaled_modules},
                device=device,
            )
            for index in range(config.num_hidden_layers)
        )
        self.output_scale = None

    def prepare(self, input_scale: float) -> float:
        self.input.scale = input_scale
        scale = input_scale
        for layer in self.layer:
            scale = layer.prepare(scale)
        self.output_scale = scale
        return scale

    def forward(self, hidden_states, hidden_states_scaling_factor=None, attention_mask=None, output_attentions=False,
                output_hidden_states=False, return_dict=True, **kwargs):
        if output_attentions or output_hidden_states or kwargs.get("output_attentions") or kwargs.get("output_hidden_states"):
            raise NotImplementedError(
                "integer-only models return the last hidden state only; output_attentions / output_hidden_states "
                "are not available. Load the model without the ibert scheme to inspect them."
            )
        if kwargs.get("encoder_hidden_states") is not None:
            raise NotImplementedError("integer-only encoders have no cross-attention.")
        check_sequence_length(hidden_states.shape[1])
        codes = self.input(hidden_states)
        keep = keep_mask(attention_mask)
        native = self.fast_path and fast_path_ready()
        for layer in self.layer:
            codes = layer(codes, keep, native)
        return BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=dequantize(codes, self.output_scale))


def compile_integer_layers(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Run the integer embeddings and encoder layers of ``model`` on the native integer kernels (the default after
    loading or quantizing), or eagerly on the reference ops with ``enabled=False``; returns ``model``.

    The kernels are built once per machine and loaded by the first call of a process (``compilation``). Integer
    arithmetic makes the outputs bit-identical either way.
    """
    modules = [m for m in model.modules() if isinstance(m, (IntegerEmbeddings, IntegerEncoder))]
    if not modules:
        raise ValueError(f"{type(model).__name__} has no integer-only modules; quantize it with Int8Config(scheme='ibert') first.")
    for module in modules:
        module.fast_path = enabled
    return model
