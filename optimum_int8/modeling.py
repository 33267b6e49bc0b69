"""``INCModelFor<Task>`` loaders: transformers Auto classes that return plain int8 transformers models.

They accept our checkpoints, fp32 checkpoints (quantized while loading when ``quantization_config`` is
given) and repo ids, and check local paths first so a typo gives an error that names the path.
"""

import json
import os
import warnings
from pathlib import Path

from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForMultipleChoice,
    AutoModelForQuestionAnswering,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)
from transformers.quantizers.auto import AUTO_QUANTIZER_MAPPING

from . import saving
from .configuration import QUANT_METHOD
from .hub import check_revision, translate_hub_errors
from .legacy import find_legacy_checkpoint, load_legacy_model
from .tasks import TASKS

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def _looks_local(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or "\\" in name


def check_local_checkpoint(pretrained_model_name_or_path, subfolder: str = "") -> None:
    """Raise a clear error for a local path that cannot be a checkpoint; repo ids pass through."""
    path = Path(pretrained_model_name_or_path).expanduser() / subfolder
    if path.is_file():
        raise NotADirectoryError(f"{path} is a file; from_pretrained expects the directory that holds config.json.")
    if not path.exists():
        if _looks_local(str(pretrained_model_name_or_path)):
            raise FileNotFoundError(f"{path} does not exist. Pass a directory written by save_pretrained, or a Hub repo id.")
        return
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} has no config.json; it is not a saved transformers model directory.")
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise FileNotFoundError(f"{path} has no weights file (expected one of {list(WEIGHT_FILES)}).")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{config_file} is not valid JSON: {error}") from error
    except RecursionError:
        raise ValueError(f"{config_file} nests JSON deeper than its parser allows; transformers never writes such a config.") from None
    _check_shard_index(path)
    quant_method = (config.get("quantization_config") or {}).get("quant_method")
    if quant_method is not None and quant_method not in AUTO_QUANTIZER_MAPPING:
        raise ValueError(
            f"{config_file}: quantization_config.quant_method is {quant_method!r}, which neither optimum-int8 "
            f"({QUANT_METHOD!r}) nor transformers knows; loading it would give a wrong model."
        )


def _check_shard_index(path: Path) -> None:
    """A shard index names files of its own directory: an entry with a path in it could make a load read any file."""
    for name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index_file = path / name
        if not index_file.is_file():
            continue
        try:
            weight_map = json.loads(index_file.read_text()).get("weight_map")
        except (ValueError, RecursionError, AttributeError) as error:
            raise ValueError(f"{index_file} is not a shard index (a JSON object with a weight_map): {str(error)[:200]}") from None
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index_file}: weight_map must be an object of tensor name -> shard file name.")
        for tensor, shard in weight_map.items():
            if not isinstance(shard, str) or shard in ("", ".", "..") or "/" in shard or "\\" in shard or shard != os.path.basename(shard):
                raise ValueError(
                    f"{index_file}: tensor {str(tensor)[:100]!r} is mapped to {str(shard)[:100]!r}, which is not a file "
                    "name in the checkpoint directory; refusing to read outside it."
                )


class _INCLoaderMixin:
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """Load with the transformers Auto class; returns the plain transformers model.

        Our int8 checkpoints come back with ``Int8DynamicLinear`` layers; fp32 ones are quantized
        while loading if ``quantization_config=Int8Config(...)`` is passed; legacy INC int8 checkpoints
        are rebuilt from their ``best_configure`` (docs/legacy.md). A local directory is held steady while
        it loads (``optimum_int8.saving.reading``): a concurrent save gives the old or the new model, never a mix.
        """
        check_revision(kwargs.get("revision"))
        with saving.reading(pretrained_model_name_or_path):
            check_local_checkpoint(pretrained_model_name_or_path, kwargs.get("subfolder", ""))
            with translate_hub_errors(pretrained_model_name_or_path, revision=kwargs.get("revision"), token=kwargs.get("token")):
                legacy_weights = find_legacy_checkpoint(pretrained_model_name_or_path, kwargs)
                if legacy_weights is not None:
                    return load_legacy_model(cls, pretrained_model_name_or_path, legacy_weights, *model_args, **kwargs)
                model = super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        loaded = model[0] if isinstance(model, tuple) else model
        if getattr(loaded, "quantization_method", None) != QUANT_METHOD:
            warnings.warn(
                f"{pretrained_model_name_or_path} is not an optimum-int8 checkpoint and no Int8Config was passed: "
                f"{cls.__name__} returned the model in its stored precision. Pass quantization_config=Int8Config() "
                "to quantize it while loading.",
                stacklevel=2,
            )
        return model


class INCModel(_INCLoaderMixin, AutoModel):
    """Base model / feature extraction."""


class INCModelForSeq2SeqLM(_INCLoaderMixin, AutoModelForSeq2SeqLM):
    """Summarization, translation, text2text generation."""


class INCModelForCausalLM(_INCLoaderMixin, AutoModelForCausalLM):
    """Text generation."""


class INCModelForSequenceClassification(_INCLoaderMixin, AutoModelForSequenceClassification):
    """Text classification."""


class INCModelForTokenClassification(_INCLoaderMixin, AutoModelForTokenClassification):
    """Token classification (NER, POS)."""


class INCModelForQuestionAnswering(_INCLoaderMixin, AutoModelForQuestionAnswering):
    """Extractive question answering."""


class INCModelForMultipleChoice(_INCLoaderMixin, AutoModelForMultipleChoice):
    """Multiple choice."""


class INCModelForMaskedLM(_INCLoaderMixin, AutoModelForMaskedLM):
    """Fill-mask."""



_LOADERS = (
    INCModel,
    INCModelForSeq2SeqLM,
    INCModelForCausalLM,
    INCModelForSequenceClassification,
    INCModelForTokenClassification,
    INCModelForQuestionAnswering,
    INCModelForMultipleChoice,
    INCModelForMaskedLM,
)
# The INCModelFor<Task> loader of each registered task (each subclasses the task's Auto class).
TASK_LOADERS = {
    name: next(loader for loader in _LOADERS if issubclass(loader, spec.auto_class)) for name, spec in TASKS.items()
}
