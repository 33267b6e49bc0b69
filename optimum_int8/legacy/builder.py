"""Build today's transformers model from a legacy INC checkpoint.

The int8 Linear weights, bf16 and fp32 fallbacks are handed to transformers' own ``from_pretrained``
in optimum-int8's format, with a manifest, so loading, tying, generation config and ``save_pretrained``
behave exactly as for our checkpoints. uint8 embeddings load first as the exact fp32 rows the kernel
looks up (so transformers ties only what is really equal), then become ``Int8Embedding`` modules.
Static int8 Linear modules load as ``int8_static`` modules with their calibrated input and output qparams.
"""

import contextlib
import copy
import logging

import torch
import transformers
from torch import nn
from transformers import GenerationConfig, PreTrainedModel
from transformers.models.auto.auto_factory import _get_model_class
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from ..configuration import SCHEME_INT8_DYNAMIC, SCHEME_INT8_STATIC, FallbackManifest, Int8Config, library_versions
from ..nn import Int8Embedding
from .layout import LegacyLayout, plan_layout
from .reader import DOWNLOAD_KWARGS, LegacyCheckpoint, LegacyCheckpointError, download_kwargs

logger = logging.getLogger(__name__)
_UNTIED_WARNING = "but both are present in the checkpoints with different values"

# transformers' *ScaledWordEmbedding classes return ``nn.Embedding.forward(ids) * self.embed_scale``.
_SCALED_EMBEDDING_SUFFIX = "ScaledWordEmbedding"


def _config(checkpoint: LegacyCheckpoint, kwargs: dict):
    """(config, remaining kwargs for from_pretrained), as transformers splits config overrides from the rest."""
    if kwargs.get("config") is not None:
        return copy.deepcopy(kwargs.pop("config")), kwargs
    kwargs.pop("config", None)
    model_type = checkpoint.config.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise LegacyCheckpointError(f"{checkpoint.source}: config.json model_type {model_type!r} is not known to transformers {transformers.__version__}.")
    return CONFIG_MAPPING[model_type].from_dict(checkpoint.config, return_unused_kwargs=True, **kwargs)


def _model_class(loader_class: type, config) -> type:
    """The concrete class an Auto loader (``INCModelFor<Task>``) picks for ``config``; other classes as given."""
    mapping = getattr(loader_class, "_model_mapping", None)
    if mapping is None:
        return loader_class
    if type(config) not in mapping:
        raise LegacyCheckpointError(
            f"{loader_class.__name__} cannot load a {config.model_type!r} model ({type(config).__name__}); "
            "use the INCModelFor<Task> class of the checkpoint's task."
        )
    return _get_model_class(config, mapping)


def architecture_class(architectures) -> type | None:
    """The transformers class config.json's ``architectures`` names (the class the checkpoint was saved from)."""
    for name in architectures or []:
        candidate = getattr(transformers, name, None)
        if isinstance(candidate, type) and issubclass(candidate, PreTrainedModel):
            return candidate
    return None


def _generation_config(source, hub_kwargs: dict) -> GenerationConfig:
    """generation_config.json if the checkpoint has one, else the generation parameters the old writers left
    in config.json (num_beams, max_length, ... for summarization models), as transformers reads old checkpoints."""
    try:
        return GenerationConfig.from_pretrained(source, **hub_kwargs)
    except OSError:
        return GenerationConfig.from_pretrained(source, config_file_name="config.json", _from_model_config=True, **hub_kwargs)


def _manifest(checkpoint: LegacyCheckpoint, layout: LegacyLayout) -> FallbackManifest:
    inc = checkpoint.inc_config
    origin = {
        "legacy-checkpoint": f"neural-compressor {layout.framework} {layout.approach}",
        "legacy-neural-compressor": inc.get("neural_compressor_version"),
        "legacy-torch": inc.get("torch_version"),
        "legacy-transformers": inc.get("transformers_version") or checkpoint.config.get("transformers_version"),
    }
    return FallbackManifest(
        int8_modules=layout.int8_modules,
        fallback_modules=dict(layout.fallback_modules),
        created_with={**library_versions(), **{key: str(value) for key, value in origin.items() if value}},
        module_schemes=dict.fromkeys(layout.dynamic_linears, SCHEME_INT8_DYNAMIC) if layout.static_linears else {},
        output_qparams_modules=list(layout.static_linears),
    )


def _embedding_scale(module: nn.Module) -> tuple[bool, float | None]:
    """(whether ``Int8Embedding`` computes what ``module`` does, the row multiplier it needs)."""
    if type(module) is nn.Embedding:
        return True, None
    scale = getattr(module, "embed_scale", None)
    if type(module).__name__.endswith(_SCALED_EMBEDDING_SUFFIX) and isinstance(scale, (int, float)):
        return True, float(scale)
    return False, None


def _embedding_modules(layout: LegacyLayout, skeleton: nn.Module) -> tuple[dict[str, Int8Embedding], set[str]]:
    """An ``Int8Embedding`` per uint8 table, and the names whose module it can replace.

    Other Embedding subclasses may compute more than a lookup; they keep the bit-identical fp32 rows.
    """
    modules, replaceable = {}, set()
    for name, table in layout.embeddings.items():
        known, scale = _embedding_scale(skeleton.get_submodule(name))
        modules[name] = Int8Embedding.from_uint8(table.weight_uint8, table.row_scale, table.row_zero_point, scale)
        if known:
            replaceable.add(name)
    return modules, replaceable


def _to_model_name(model: PreTrainedModel, name: str) -> str | None:
    """A checkpoint module name in ``model``'s names, across the base-model prefix (None: not in this model)."""
    modules = dict(model.named_modules())
    prefix = f"{model.base_model_prefix}." if model.base_model_prefix else ""
    for candidate in (name, name[len(prefix):] if prefix and name.startswith(prefix) else None, prefix + name):
        if candidate in modules:
            return candidate
    return None


def _swap_embeddings(model: PreTrainedModel, embeddings: dict[str, Int8Embedding], replaceable: set[str]) -> None:
    """Replace the float stand-ins; modules transformers tied to one Parameter share one Int8Embedding."""
    shared: dict[tuple, Int8Embedding] = {}
    for name in sorted(replaceable):
        model_name = _to_model_name(model, name)
        if model_name is not None:
            key = (id(model.get_submodule(model_name).weight), embeddings[name].embed_scale)
            model.set_submodule(model_name, shared.setdefault(key, embeddings[name]))


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tensors that shared storage in the pickle (the old tie, e.g. T5's encoder and decoder embed_tokens) as copies.

    Today's tie map may pair them differently (both with T5's ``shared``, which the old stack quantized);
    transformers ties only pairs it finds equal, and its save drops a name whenever storage is shared,
    so storage shared outside those pairs would reload tied to the wrong tensor.
    """
    seen, result = set(), {}
    for key, tensor in tensors.items():
        pointer = tensor.untyped_storage().data_ptr()
        result[key] = tensor.clone() if pointer in seen else tensor
        seen.add(pointer)
    return result


def _state_dict(layout: LegacyLayout, embeddings: dict[str, Int8Embedding]) -> dict[str, torch.Tensor]:
    state_dict = _unshared(layout.float_tensors)
    int8 = {**layout.dynamic_linears, **{name: weights for name, (weights, _) in layout.static_linears.items()}}
    for name, weights in int8.items():
        state_dict[f"{name}.weight_int8"] = weights.weight_int8
        state_dict[f"{name}.weight_scale"] = weights.weight_scale
        if weights.bias is not None:
            state_dict[f"{name}.bias"] = weights.bias
    for name, (_, qparams) in layout.static_linears.items():
        for what in ("input", "output"):
            scale = getattr(qparams, f"{what}_scale")
            state_dict[f"{name}.{what}_scale"] = torch.tensor([scale], dtype=torch.float32)
            state_dict[f"{name}.{what}_zero_point"] = torch.tensor([getattr(qparams, f"{what}_zero_point")], dtype=torch.int32)
            if float(state_dict[f"{name}.{what}_scale"]) != scale:
                raise LegacyCheckpointError(
                    f"static int8 Linear {name!r} has {what} scale {scale!r}, which float32 cannot hold; torch.ao "
                    "stored float32 scales, so this checkpoint was not written by the old stack as is."
                )
    for name, module in embeddings.items():
        state_dict[f"{name}.weight"] = module.dequantized_weight()
    return state_dict


class _UntiedEmbeddingsNote(logging.Filter):
    """transformers warns when tied weights differ and advises ``tie_word_embeddings=False``.

    In a legacy checkpoint that is expected (the old stack quantized one side of the tie: T5's ``shared``,
    BART's embeddings beside an fp32 ``lm_head``), and the advice would be wrong: for T5 the flag also
    changes how the decoder output is scaled. Keep transformers' decision (not tied), say why at info level.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if _UNTIED_WARNING in record.getMessage():
            logger.info("legacy checkpoint: %s (expected: the old stack quantized one side of the tie)", record.getMessage().split(",")[0])
            return False
        return True


@contextlib.contextmanager
def _expected_untied_weights():
    transformers_logger = logging.getLogger("transformers.modeling_utils")
    note = _UntiedEmbeddingsNote()
    transformers_logger.addFilter(note)
    try:
        yield
    finally:
        transformers_logger.removeFilter(note)


def build_legacy_model(checkpoint: LegacyCheckpoint, loader_class: type, *model_args, **kwargs):
    """The model ``loader_class`` (an Auto class or a PreTrainedModel subclass) builds, with the legacy
    checkpoint's int8 modules and weights."""
    if kwargs.get("quantization_config") is not None:
        raise LegacyCheckpointError(
            f"{checkpoint.source} is an already quantized legacy INC checkpoint; drop quantization_config."
        )
    hub_kwargs = download_kwargs(kwargs)
    kwargs = {key: value for key, value in kwargs.items() if key not in DOWNLOAD_KWARGS and key != "quantization_config"}
    output_loading_info = kwargs.pop("output_loading_info", False)
    config, kwargs = _config(checkpoint, kwargs)
    model_class = _model_class(loader_class, config)
    if kwargs.get("generation_config") is None and model_class.can_generate():
        kwargs["generation_config"] = _generation_config(checkpoint.source, hub_kwargs)
    with torch.device("meta"):
        skeleton = (architecture_class(getattr(config, "architectures", None)) or model_class)(config)
    layout = plan_layout(checkpoint, skeleton)
    embeddings, replaceable = _embedding_modules(layout, skeleton)
    del skeleton
    # The old stack ran torch.ao's fbgemm dynamic Linear with 7-bit activations, and FX graphs' static Linear with
    # calibrated input and output qparams (fbgemm's requantizing GEMM), in fp32: so do we, to reproduce its outputs
    # (also after conversion to our format, which keeps these settings).
    config.quantization_config = Int8Config(
        modules_in_fp32=[name for name, dtype in layout.fallback_modules.items() if dtype == "float32"],
        modules_in_bf16=[name for name, dtype in layout.fallback_modules.items() if dtype == "bfloat16"],
        manifest=_manifest(checkpoint, layout),
        scheme=SCHEME_INT8_STATIC if layout.static_linears else SCHEME_INT8_DYNAMIC,
        kernel="fbgemm", compute_dtype="float32", reduce_range=True,
    ).to_dict()
    with _expected_untied_weights():
        model, loading_info = model_class.from_pretrained(
            None, *model_args, config=config, state_dict=_state_dict(layout, embeddings), output_loading_info=True,
            **kwargs,
        )
    missing = sorted(loading_info["missing_keys"])
    if missing:
        raise LegacyCheckpointError(
            f"{checkpoint.weights_file} lacks {len(missing)} tensor(s) that {type(model).__name__} needs, e.g. "
            f"{missing[:5]}; the checkpoint does not match its config.json."
        )
    _swap_embeddings(model, embeddings, replaceable)
    return (model, loading_info) if output_loading_info else model
