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


_SAFETENSORS_DTYPES = {torch.int8: "I8", torch.int32: "I32", torch.float32: "F32", torch.bfloat16: "BF16"}


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


# Tensors an older transformers saved that today's models dropped; transformers skips them on load too.
_IGNORED_EXTRA = re.compile(r"(^|\.)(position_ids|rotary_emb\.inv_freq)$")
# The manifest's created_with key of a model rebuilt from a legacy INC checkpoint (and of its conversion).
LEGACY_ORIGIN = "legacy-checkpoint"
# weight_scale = max|W| / 127, clamped to >= 1e-12 when written; 1e6 would mean weights of magnitude 1e8.
SCALE_RANGE = (1e-12, 1e6)


def _to_model_name(name: str, model_names, prefix: str | None) -> str:
    """``name`` in the model's names across the base-model prefix (a task checkpoint in its base model, or back)."""
    if name in model_names or not prefix:
        return name
    if name.startswith(prefix) and name[len(prefix):] in model_names:
        return name[len(prefix):]
    return prefix + name if prefix + name in model_names else name


def validate_float_tensors(headers, model_shapes: dict, module_types: dict, converted, prefix: str | None,
                           manifest_source: str) -> None:
    """Check the checkpoint's other tensors against the model built from config.json.

    ``model_shapes``: the float model's ``{tensor name: shape}``; ``module_types``: ``{module name: class
    name}``; ``converted``: ``{checkpoint name: tensor suffixes}`` of the int8/bf16 modules, whose own
    tensors ``validate_module_tensors`` checks.
    A tensor of a module the model has must be one of that module's tensors, with its shape; tensors of
    modules the model lacks, or of the top-level model (a task head, loading the base model), are left to
    transformers' load report.
    """
    for key, (path, dtype, shape) in headers.items():
        module_name, _, attribute = key.rpartition(".")
        if module_name in converted and attribute not in converted[module_name]:
            raise CheckpointError(
                f"{path}: tensor {key!r} has no place in the model: {module_name!r} is listed in {manifest_source} "
                f"with tensors {sorted(converted[module_name])}, not {attribute!r}. It belongs to another scheme."
            )
        if module_name in converted or _IGNORED_EXTRA.search(key):
            continue
        name = _to_model_name(key, model_shapes, prefix)
        if name in model_shapes:
            if list(model_shapes[name]) != list(shape):
                raise CheckpointError(
                    f"{path}: tensor {key!r} is {dtype} {shape}, but the model config.json describes needs "
                    f"{list(model_shapes[name])}: the weights and config.json do not belong together."
                )
            continue
        module = _to_model_name(module_name, module_types, prefix)
        if module and module in module_types:
            raise CheckpointError(
                f"{path}: tensor {key!r} has no place in the model: {module!r} ({module_types[module]}) has no "
                f"{attribute!r}. It belongs to another scheme or architecture than {manifest_source} and config.json describe."
            )


def validate_values(module_name: str, tensors: dict, files: dict, legacy_codes: bool = False) -> None:
    """Values the format allows in one converted module's tensors ``{suffix: tensor}``: int8 codes in
    [-127, 127] (``legacy_codes``: [-128, 127], as the old INC stack quantized), finite float tensors,
    scales in ``SCALE_RANGE``, activation zero points in [0, 255]. ``files`` maps tensor names to files."""
    for suffix, tensor in tensors.items():
        key = f"{module_name}.{suffix}"
        where = f"{files[key]}: " if key in files else ""
        if tensor.dtype == torch.int8:
            bad = tensor == -128
            if not legacy_codes and bad.any():
                first = [int(i) for i in bad.nonzero()[0]]
                raise CheckpointError(
                    f"{where}tensor {key!r} holds int8 code -128 ({int(bad.sum())} times, first at {first}); the "
                    "format's symmetric codes are [-127, 127]. The file is corrupt or was not written by optimum-int8."
                )
            continue
        if suffix.endswith("zero_point") and tensor.numel() and not 0 <= int(tensor.min()) <= int(tensor.max()) <= 255:
            raise CheckpointError(
                f"{where}tensor {key!r} holds zero point {int(tensor.min())}..{int(tensor.max())}, outside the uint8 "
                "range [0, 255]; the file is corrupt."
            )
        if not tensor.is_floating_point():
            continue
        finite = torch.isfinite(tensor)
        if not finite.all():
            first = [int(i) for i in (~finite).nonzero()[0]]
            raise CheckpointError(
                f"{where}tensor {key!r} holds {int((~finite).sum())} NaN or infinite value(s), first at {first}; "
                "the file is corrupt."
            )
        if suffix.endswith("scale") and tensor.numel():
            low, high = float(tensor.min()), float(tensor.max())
            too_small = low < SCALE_RANGE[0] * (1 - 1e-6)  # the bound as float32 rounds it
            if too_small or high > SCALE_RANGE[1]:
                value = low if too_small else high
                raise CheckpointError(
                    f"{where}tensor {key!r} holds scale {value:g}, outside [{SCALE_RANGE[0]:g}, {SCALE_RANGE[1]:g}] "
                    "(zero, negative or absurd); the file is corrupt."
                )


def tensor_files(headers, module_types: dict, prefix: str | None) -> dict[str, str]:
    """``{tensor name in the model's names: file}``, for messages about values read later."""
    files = {}
    for key, (path, _, _) in headers.items():
        module_name, _, attribute = key.rpartition(".")
        files[f"{_to_model_name(module_name, module_types, prefix)}.{attribute}"] = path
    return files
