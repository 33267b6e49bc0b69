"""Rewrite a legacy INC int8 checkpoint in optimum-int8's safetensors format."""

import os
from pathlib import Path

import transformers
from torch import nn

from .. import saving
from ..hub import check_revision
from ..tasks import TASK_AUTO_CLASSES
from ..nn import Int8DynamicLinear, StaticInt8Linear
from .builder import architecture_class, build_legacy_model
from .reader import LegacyCheckpointError, download_kwargs, find_legacy_checkpoint, read_legacy_checkpoint, resolve_file

# Tokenizer and preprocessing files transformers reads beside a model; copied verbatim when present.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.txt",
    "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model", "source.spm",
    "target.spm", "bpe.codes", "preprocessor_config.json",
)


def _loader_class(checkpoint, task: str | None) -> type:
    if task is not None:
        if task not in TASK_AUTO_CLASSES:
            raise ValueError(f"task {task!r} is not one of {sorted(TASK_AUTO_CLASSES)}.")
        return TASK_AUTO_CLASSES[task]
    model_class = architecture_class(checkpoint.config.get("architectures"))
    if model_class is None:
        named = checkpoint.config.get("architectures")
        what = f"architectures {named} name no transformers {transformers.__version__} class" if named else "names no architecture"
        raise LegacyCheckpointError(
            f"{checkpoint.source}: config.json {what}, so the checkpoint's head is unknown; pass its task "
            f"(one of {sorted(TASK_AUTO_CLASSES)})."
        )
    return model_class


def static_to_dynamic(model: nn.Module) -> list[str]:
    """Swap every ``StaticInt8Linear`` for an ``Int8DynamicLinear`` with the same int8 weights; their names."""
    names = [name for name, module in model.named_modules() if isinstance(module, StaticInt8Linear)]
    for name in names:
        static = model.get_submodule(name)
        weight_int8, weight_scale, bias = static.int8_weights()
        dynamic = Int8DynamicLinear(static.in_features, static.out_features, bias=bias is not None)
        dynamic.weight_int8, dynamic.weight_scale = weight_int8, weight_scale
        if bias is not None:
            dynamic.bias = nn.Parameter(bias, requires_grad=False)
        dynamic.pack()
        model.set_submodule(name, dynamic)
    return names


def _sources(source) -> list[str]:
    return [str(Path(source).expanduser())] if Path(source).expanduser().is_dir() else []


def convert_legacy_checkpoint(source, destination, *, task: str | None = None, static_as_dynamic: bool = False,
                              **kwargs) -> Path:
    """Rewrite the legacy INC checkpoint at ``source`` (directory or Hub repo id) in optimum-int8's format.

    ``destination`` gets ``model.safetensors`` + ``config.json`` (with the manifest), the generation config
    and the tokenizer files, all through ``optimum_int8.saving`` (staged, fsync'd, renamed into place: a
    failure or a crash leaves nothing behind); it must be a new or empty directory. The converted model's
    outputs equal the legacy-loaded model's bit for bit: uint8 embeddings are stored as the exact fp32 rows the kernel looks up (the format has no int8
    embeddings). Static int8 checkpoints need ``static_as_dynamic=True``: the same int8 weights with
    activations quantized per call, which changes outputs slightly. ``task`` (a key of ``TASK_AUTO_CLASSES``)
    is needed only when config.json names no architecture. ``kwargs`` go to ``from_pretrained``
    (``revision``, ``cache_dir``, ``token``, ...).
    """
    check_revision(kwargs.get("revision"))
    destination = Path(destination).expanduser().absolute()
    saving.check_target(Path(os.path.realpath(destination)), sources=_sources(source), new_only=True)
    weights_file = find_legacy_checkpoint(source, kwargs)
    if weights_file is None:
        raise LegacyCheckpointError(
            f"{source} is not a legacy INC int8 checkpoint: its config.json has no \"torch_dtype\": \"int8\" and it "
            "has no inc_config.json. optimum-int8 checkpoints and fp32 models need no conversion."
        )
    checkpoint = read_legacy_checkpoint(source, weights_file, kwargs)
    model = build_legacy_model(checkpoint, _loader_class(checkpoint, task), **kwargs)
    if any(isinstance(module, StaticInt8Linear) for module in model.modules()):
        if not static_as_dynamic:
            raise LegacyCheckpointError(
                f"{source} is a static int8 checkpoint (calibrated activation scales); optimum-int8's format stores "
                "dynamic int8 only. Pass static_as_dynamic=True (--static-as-dynamic) to keep its int8 weights and "
                "quantize activations per call: outputs then differ slightly from the legacy model's."
            )
        converted = static_to_dynamic(model)
        model.config.quantization_config.manifest.created_with["legacy-static-as-dynamic"] = f"{len(converted)} modules"
    hub_kwargs = download_kwargs(kwargs)
    files = {name: path for name in TOKENIZER_FILES if (path := resolve_file(source, name, hub_kwargs)) is not None}
    for local in _sources(source):
        root = os.path.realpath(local)
        for name, path in files.items():
            if os.path.commonpath([root, os.path.realpath(path)]) != root:
                raise LegacyCheckpointError(
                    f"{path} links outside {local} (to {os.path.realpath(path)}); refusing to copy it into the converted checkpoint."
                )
    return saving.save_quantized(model, destination, files=files, sources=_sources(source), carry_over=False, new_only=True)
