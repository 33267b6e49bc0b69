"""The checkpoint file format: read safetensors headers and validate them against the manifest before
trusting them. How checkpoints are written to disk (staging, fsync, atomic swap) is ``saving``'s."""

import re

import torch
from safetensors import SafetensorError, safe_open

_WEIGHT_FILE = re.compile(r"^(model|pytorch_model)(-\d{5}-of-\d{5})?\.(safetensors|bin)(\.index\.json)?$")


def is_weight_file(name: str) -> bool:
    """Whether ``name`` is a weights file (or shard index) that transformers writes or reads."""
    return _WEIGHT_FILE.match(name) is not None


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or disagrees with its config.json manifest."""


def read_tensor_headers(checkpoint_files) -> dict[str, tuple[str, str, list[int]]]:
    """``{tensor name: (file, dtype, shape)}`` from safetensors headers, without reading tensor data."""
    headers = {}
    for path in checkpoint_files:
        path = str(path)
        if not path.endswith(".safetensors"):
            raise CheckpointError(
                f"{path}: optimum-int8 checkpoints are safetensors only; refusing to unpickle a weights file. "
                "Re-save the model with save_pretrained, or convert it with a trusted tool."
            )
        try:
            with safe_open(path, framework="pt") as handle:
                for key in handle.keys():
                    tensor_slice = handle.get_slice(key)
                    headers[key] = (path, tensor_slice.get_dtype(), list(tensor_slice.get_shape()))
        except (SafetensorError, OSError, ValueError) as error:
            raise CheckpointError(
                f"{path} is not a readable safetensors file ({error}). It may be truncated or corrupt: "
                "download or save it again."
            ) from error
    return headers


_SAFETENSORS_DTYPES = {torch.int8: "I8", torch.float32: "F32", torch.bfloat16: "BF16"}


def _expect(headers, key, dtype, shape, precision, manifest_source):
    if key not in headers:
        raise CheckpointError(
            f"{manifest_source} lists {key.rsplit('.', 1)[0]!r} as {precision}, but no checkpoint file has tensor {key!r}."
        )
    path, found_dtype, found_shape = headers[key]
    if found_dtype != dtype or found_shape != shape:
        raise CheckpointError(
            f"{path}: tensor {key!r} is {found_dtype} {found_shape}, but the manifest in {manifest_source} "
            f"and the model architecture require {dtype} {shape}."
        )


def validate_module_tensors(headers, layouts: dict, listed: dict, manifest_source: str) -> None:
    """Check the converted modules being loaded against the files, and the files against the manifest.

    ``layouts`` maps checkpoint module name to ``(precision, {tensor suffix: (torch dtype, shape)})`` as
    the module class and the model architecture require. ``listed`` maps each class's marker tensor
    suffix (``"weight_int8"``, ``"weight_bf16"``) to ``(precision, module names)`` from the whole manifest,
    which may name head modules that a base model being loaded does not have.
    """
    for name, (precision, layout) in layouts.items():
        for suffix, (dtype, shape) in layout.items():
            _expect(headers, f"{name}.{suffix}", _SAFETENSORS_DTYPES[dtype], list(shape), precision, manifest_source)
        if name + ".weight" in headers:
            raise CheckpointError(
                f"{headers[name + '.weight'][0]}: holds a float {name + '.weight'!r} for a module the manifest in "
                f"{manifest_source} lists as {precision}; the file and config.json do not belong together."
            )
    for key, (path, _, _) in headers.items():
        module_name, _, suffix = key.rpartition(".")
        if suffix in listed and module_name not in listed[suffix][1]:
            precision = listed[suffix][0]
            raise CheckpointError(
                f"{path}: tensor {key!r} is {precision}, but the manifest in {manifest_source} does not list "
                f"{module_name!r} as {precision}."
            )
