"""Swap a transformers encoder's ``embeddings`` and ``encoder`` for integer-only ones, and describe the result.

``convert_to_integer`` quantizes a loaded float (or I-BERT) model; ``install_skeleton`` builds the empty
integer modules on the meta device for transformers to load a saved checkpoint into. Both leave the task
head (pooler, classifier, LM head) in float, where I-BERT keeps it too.
"""

import torch
from transformers import PreTrainedModel

from .. import linear_modules
from .._memory import trim_heap
from ..nn.integer_layers import IntegerEmbedding, IntegerEncoderLayer, IntegerLayerNorm, IntegerLinear, _ScaledModule
from .architecture import base_model_path, encoder_family, qualified
from .modules import IntegerEmbeddings, IntegerEncoder

ENCODER_PREFIX = "encoder."


def _build(model: PreTrainedModel, scales: dict[str, dict], device) -> tuple[IntegerEmbeddings, IntegerEncoder]:
    family = encoder_family(model)
    missing = sorted(set(scale_paths(model.config)) - set(scales))
    if missing:
        raise ValueError(f"activation scales are missing for {missing[:4]}{' ...' if len(missing) > 4 else ''}")
    encoder_scales = {path[len(ENCODER_PREFIX):]: value for path, value in scales.items() if path.startswith(ENCODER_PREFIX)}
    return (
        IntegerEmbeddings(model.config, family, scales["embeddings"], device=device),
        IntegerEncoder(model.config, encoder_scales, device=device),
    )


def scale_paths(config) -> list[str]:
    """Paths (relative to the base model) of every module with activation scales."""
    return ["embeddings"] + [
        f"encoder.layer.{index}.{name}" for index in range(config.num_hidden_layers) for name in IntegerEncoderLayer.scaled_modules
    ]


def _install(model: PreTrainedModel, embeddings: IntegerEmbeddings, encoder: IntegerEncoder) -> None:
    base = model.base_model
    # The LM head's decoder is tied to the word embeddings, which become int8: it keeps its own float copy.
    linear_modules.untie_modules(model, [qualified(base_model_path(model), "embeddings.word_embeddings")])
    base.embeddings = embeddings
    base.encoder = encoder


def _quantize_leaves(integer_module: torch.nn.Module, float_module: torch.nn.Module) -> None:
    """Replace every leaf of a meta-device integer skeleton by the quantized float module at the same path."""
    for name, leaf in list(integer_module.named_modules()):
        if isinstance(leaf, IntegerLinear):
            source = float_module.get_submodule(name)
            integer_module.set_submodule(name, IntegerLinear.from_float(source.weight, source.bias))
        elif isinstance(leaf, IntegerEmbedding):
            integer_module.set_submodule(name, IntegerEmbedding.from_float(float_module.get_submodule(name).weight))
        elif isinstance(leaf, IntegerLayerNorm):
            integer_module.set_submodule(name, IntegerLayerNorm.from_float(float_module.get_submodule(name)))


def prepare_integer_model(model: PreTrainedModel) -> None:
    """Derive every integer constant from the loaded weights and scales (run once after loading)."""
    base = model.base_model
    with torch.no_grad():
        base.encoder.prepare(base.embeddings.prepare())
    # Packing frees every loaded weight, and glibc keeps such freed blocks resident: 0.5 GiB on RoBERTa-base.
    trim_heap()


def convert_to_integer(model: PreTrainedModel, scales: dict[str, dict]) -> None:
    """Quantize ``model``'s embeddings and encoder in place to integer-only modules with these activation scales."""
    with torch.device("meta"):
        embeddings, encoder = _build(model, scales, device=None)
    base = model.base_model
    with torch.no_grad():
        _quantize_leaves(embeddings, base.embeddings)
        _quantize_leaves(encoder, base.encoder)
    _install(model, embeddings, encoder)
    prepare_integer_model(model)


def install_skeleton(model: PreTrainedModel, scales: dict[str, dict]) -> None:
    """Put empty integer modules (meta device) in place for transformers to load a saved checkpoint into."""
    with torch.device("meta"):
        embeddings, encoder = _build(model, scales, device=None)
    _install(model, embeddings, encoder)


def int8_modules(model: PreTrainedModel) -> dict[str, torch.nn.Module]:
    """The int8 modules (Linear layers and embedding tables) by qualified name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, (IntegerLinear, IntegerEmbedding))}


def float_linears(model: PreTrainedModel) -> list[str]:
    """The Linear modules left in float (the task head and pooler)."""
    return list(linear_modules.find_float_linears(model))


def activation_scales(model: PreTrainedModel) -> dict[str, dict[str, float]]:
    """Every integer module's activation scales by qualified name (what the manifest records)."""
    return {name: dict(m.activation_scales) for name, m in model.named_modules() if isinstance(m, _ScaledModule)}


def relative_scales(model: PreTrainedModel, scales: dict[str, dict]) -> dict[str, dict]:
    """Manifest scales (qualified names, maybe with a task model's base prefix) relative to ``model``'s base model."""
    base_path = base_model_path(model)
    prefix = f"{base_path}." if base_path else ""
    relative = {}
    for name, value in scales.items():
        if prefix and name.startswith(prefix):
            name = name[len(prefix):]
        elif not prefix and model.base_model_prefix and name.startswith(f"{model.base_model_prefix}."):
            name = name[len(model.base_model_prefix) + 1:]
        relative[name] = value
    return relative
