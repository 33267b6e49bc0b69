"""The transformers encoders the ibert scheme converts (BERT, RoBERTa, I-BERT) and where their parts live."""

import dataclasses

from transformers import PreTrainedModel

from ..nn.integer_layers import MAX_SEQUENCE


@dataclasses.dataclass(frozen=True)
class EncoderFamily:
    model_type: str
    # Position ids count from padding_idx + 1 and skip padding (RoBERTa, I-BERT) instead of 0, 1, 2, ...
    padded_positions: bool
    # I-BERT's base model expects ``embeddings`` to return (hidden states, scaling factor).
    embeddings_return_scale: bool


FAMILIES = {
    "bert": EncoderFamily("bert", padded_positions=False, embeddings_return_scale=False),
    "roberta": EncoderFamily("roberta", padded_positions=True, embeddings_return_scale=False),
    "ibert": EncoderFamily("ibert", padded_positions=True, embeddings_return_scale=True),
}


def encoder_family(model: PreTrainedModel) -> EncoderFamily:
    """The family of ``model``, after checking that the integer encoder can compute it; raises otherwise."""
    config = model.config
    name = type(model).__name__
    family = FAMILIES.get(config.model_type)
    if family is None:
        raise ValueError(
            f"the ibert scheme converts BERT, RoBERTa and I-BERT encoders ({sorted(FAMILIES)}); {name} has "
            f"model_type {config.model_type!r}. Use the int8_dynamic scheme for it."
        )
    problems = []
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        problems.append("it is configured as a decoder (is_decoder / add_cross_attention)")
    if config.hidden_act != "gelu":
        problems.append(f"hidden_act is {config.hidden_act!r}; i-GELU approximates the exact 'gelu' only")
    if getattr(config, "position_embedding_type", "absolute") not in (None, "absolute"):
        problems.append(f"position_embedding_type is {config.position_embedding_type!r}; only 'absolute' is supported")
    if config.hidden_size % config.num_attention_heads:
        problems.append("hidden_size is not a multiple of num_attention_heads")
    if problems:
        raise ValueError(f"{name} cannot run integer-only: " + "; ".join(problems) + ".")
    base = model.base_model
    if not all(hasattr(base, part) for part in ("embeddings", "encoder")):
        raise ValueError(f"{name}'s base model {type(base).__name__} has no embeddings/encoder modules to convert.")
    return family


def base_model_path(model: PreTrainedModel) -> str:
    """Qualified name of the base model inside ``model`` ("" when ``model`` is the base model)."""
    prefix = model.base_model_prefix
    return prefix if prefix and model.base_model is not model and hasattr(model, prefix) else ""


def qualified(base_path: str, name: str) -> str:
    return f"{base_path}.{name}" if base_path else name


def check_sequence_length(length: int) -> None:
    if length > MAX_SEQUENCE:
        raise ValueError(f"integer-only models take at most {MAX_SEQUENCE} tokens per sequence, got {length}.")
