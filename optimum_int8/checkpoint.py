"""Checkpoint files on disk: validate int8 safetensors before trusting them; save atomically."""

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from . import hub, modelcard

_WEIGHT_FILE = re.compile(r"^(model|pytorch_model)(-\d{5}-of-\d{5})?\.(safetensors|bin)(\.index\.json)?$")


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


def _carry_over(old_dir: Path, new_dir: Path) -> None:
    """Keep files saved earlier beside the weights (tokenizer, README, ...); old weights are replaced."""
    for entry in old_dir.iterdir():
        destination = new_dir / entry.name
        if _WEIGHT_FILE.match(entry.name) or destination.exists():
            continue
        if entry.is_dir():
            shutil.copytree(entry, destination, symlinks=True)
        else:
            shutil.copy2(entry, destination, follow_symlinks=False)


def _swap_into_place(staging: Path, target: Path) -> None:
    if not target.exists():
        os.rename(staging, target)
        return
    backup = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.rmdir(backup)
    os.rename(target, backup)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(backup, target)
        raise
    shutil.rmtree(backup, ignore_errors=True)


@contextlib.contextmanager
def staged_directory(target: Path, carry_over: bool = True):
    """Yield a temporary sibling directory of ``target`` to write into; on success it replaces ``target``.

    On any failure the temporary directory is removed and ``target`` is left exactly as it was. With
    ``carry_over``, files already in ``target`` other than weights (tokenizer, README, ...) are kept.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        if carry_over and target.is_dir():
            _carry_over(target, staging)
        yield staging
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)
        _swap_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def atomic_save_pretrained(model, save_directory, *args, **kwargs):
    """``save_pretrained`` that writes into a temporary sibling directory and renames it into place.

    On any failure the temporary directory is removed and ``save_directory`` is left exactly as it was.
    The directory gets the generated model card (README.md). Bound to each quantized model as its
    ``save_pretrained``; ``push_to_hub=True`` saves and pushes through ``optimum_int8.hub.push_to_hub``.
    """
    target = Path(save_directory).absolute()
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"save_pretrained: {target} exists and is a file; pass a directory path.")
    if kwargs.pop("push_to_hub", False):
        push_kwargs = {key: kwargs.pop(key) for key in hub.PUSH_KEYWORDS if key in kwargs}
        return hub.push_to_hub(model, push_kwargs.pop("repo_id", target.name), save_directory=target, save_args=args,
                               save_kwargs=kwargs, **push_kwargs)
    with staged_directory(target) as staging:
        type(model).save_pretrained(model, staging, *args, **kwargs)
        modelcard.write_model_card(model, staging, repo_id=target.name)
