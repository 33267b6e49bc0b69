"""Rewrite a legacy INC int8 checkpoint in optimum-int8's safetensors format."""

import dataclasses
import os
from pathlib import Path

import transformers
from torch import nn

from .. import saving
from ..hub import check_revision
from ..tasks import TASK_AUTO_CLASSES
from ..configuration import SCHEME_INT8_DYNAMIC
from ..nn import Int8DynamicLinear, Int8StaticActivationLinear
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
    """Swap every static int8 Linear for an ``Int8DynamicLinear`` with the same int8 weights, and make the model's
    quantization config say so; their names."""
    names = [name for name, module in model.named_modules() if isinstance(module, Int8StaticActivationLinear)]
    for name in names:
        static = model.get_submodule(name)
        dynamic = Int8DynamicLinear(static.in_features, static.out_features, bias=static.bias is not None)
        weights = static.packed_state()
        dynamic.weight_int8, dynamic.weight_scale = weights["weight_int8"], weights["weight_scale"]
        if static.bias is not None:
            dynamic.bias = nn.Parameter(static.bias.detach().clone(), requires_grad=False)
        dynamic.pack()
        model.set_submodule(name, dynamic)
    if not names:
        return names
    config = model.config.quantization_config
    config.scheme = SCHEME_INT8_DYNAMIC
    config.manifest = dataclasses.replace(config.manifest, module_schemes={}, output_qparams_modules=[], created_with={
        **config.manifest.created_with, "legacy-static-as-dynamic": f"{len(names)} modules"})
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
    embeddings); static int8 Linear modules are stored as ``int8_static`` modules with their calibrated input and
    output qparams. ``static_as_dynamic=True`` stores them as dynamic int8 instead: the same int8 weights with
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
    if static_as_dynamic:
        static_to_dynamic(model)
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
