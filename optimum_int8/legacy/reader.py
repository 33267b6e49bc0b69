"""Find and read a legacy INC int8 checkpoint without running anything from it.

Legacy checkpoints were written by optimum-intel 1.x with neural-compressor's 1.x yaml API (eager
``framework: pytorch``) or its 2.x API (``pytorch_fx``): ``config.json`` (the fp32 config plus
``"torch_dtype": "int8"``), ``pytorch_model.bin`` (the quantized model's state dict plus a
``"best_configure"`` entry describing every op) and, from optimum-intel 1.6 on, ``inc_config.json``.
optimum-intel 1.2 wrote the configuration as ``best_configure.yaml`` beside the weights instead.
"""

import dataclasses
import json
import pickle
import re
import warnings
from collections.abc import Mapping
from typing import Any

import torch
import yaml
from transformers.utils.hub import cached_file

WEIGHTS_FILE = "pytorch_model.bin"
INC_CONFIG_FILE = "inc_config.json"
BEST_CONFIGURE_FILE = "best_configure.yaml"
CONFIG_FILE = "config.json"
BEST_CONFIGURE_KEY = "best_configure"
DOWNLOAD_KWARGS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision", "subfolder")
# What the old writers added to config.json: the fake dtype would make transformers build an int8 model.
_OLD_STACK_CONFIG_KEYS = {"torch_dtype": ("int8",), "dtype": ("int8",), "backend": ("default", "ipex"),
                          "framework": ("pytorch", "pytorch_fx", "pytorch_ipex")}


class LegacyCheckpointError(ValueError):
    """A legacy INC checkpoint is malformed, unsafe to read, or uses a layout optimum-int8 cannot rebuild."""


@dataclasses.dataclass
class LegacyCheckpoint:
    source: str
    weights_file: str
    config: dict
    best_configure: dict
    state_dict: dict[str, Any]
    module_versions: dict[str, int] | None
    inc_config: dict


def download_kwargs(kwargs: Mapping) -> dict:
    return {key: kwargs[key] for key in DOWNLOAD_KWARGS if key in kwargs}


def resolve_file(source, filename: str, hub_kwargs: dict) -> str | None:
    """Local path of ``filename`` in a directory or Hub repo (downloaded to the cache), None if absent."""
    return cached_file(source, filename, _raise_exceptions_for_missing_entries=False, **hub_kwargs)


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise LegacyCheckpointError(f"{path} is not valid JSON: {error}") from error


def is_legacy_config(config: dict) -> bool:
    """The old writers' mark in config.json: ``"torch_dtype": "int8"`` and no modern quantization_config."""
    return "quantization_config" not in config and "int8" in (config.get("torch_dtype"), config.get("dtype"))


def find_legacy_checkpoint(source, kwargs: Mapping) -> str | None:
    """The weights file of the legacy INC checkpoint at ``source`` (directory or repo id), else None.

    Only config.json is read (plus a look for inc_config.json when config.json alone does not tell),
    so this is cheap for every other kind of checkpoint.
    """
    hub_kwargs = download_kwargs(kwargs)
    config_file = resolve_file(source, CONFIG_FILE, hub_kwargs)
    if config_file is None:
        return None
    config = _read_json(config_file)
    if "quantization_config" in config:
        return None
    if not is_legacy_config(config) and resolve_file(source, INC_CONFIG_FILE, hub_kwargs) is None:
        return None
    weights_file = resolve_file(source, WEIGHTS_FILE, hub_kwargs)
    if weights_file is None:
        raise LegacyCheckpointError(
            f"{source} looks like a legacy INC int8 checkpoint (config.json has torch_dtype 'int8' or there is an "
            f"inc_config.json) but has no {WEIGHTS_FILE}; the old stack saved its int8 weights only there."
        )
    return weights_file


def _unsafe_reason(error: Exception) -> str:
    """torch's own reason (the offending global or opcode), without its advice to retry unsafely."""
    match = re.search(r"(Unsupported [^\n]*?|Trying to load [^\n]*?|Can only [^\n]*?)(?: was not an allowed global|\.\s|\.?$)",
                      str(error), re.MULTILINE)
    reason = match.group(1) if match else str(error).strip().splitlines()[0]
    if "neural_compressor" in reason:
        reason += "; neural-compressor 1.x pickled best_configure as its own DotDict class"
    return reason


def load_weights_safely(path: str) -> dict:
    """``torch.load(weights_only=True)``: tensors, quantized tensors and plain containers, nothing else runs."""
    try:
        # torch warns that TypedStorage and quantized tensors are deprecated: nothing a reader can act on.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise LegacyCheckpointError(
            f"{path}: refusing to unpickle it. optimum-int8 reads legacy checkpoints only with "
            f"torch.load(weights_only=True), which rebuilds tensors and plain containers, and this file needs "
            f"more ({_unsafe_reason(error)}). Nothing from the file was run. If you trust where it came from, "
            "load it with the library that wrote it and save its state_dict again with plain dicts and tensors."
        ) from error
    except (RuntimeError, EOFError, OSError) as error:
        if "TorchScript" in str(error):
            raise LegacyCheckpointError(
                f"{path} is a TorchScript archive (neural-compressor's IPEX backend): a program, not a state dict. "
                "optimum-int8 does not run code from checkpoints; quantize the fp32 model with optimum-int8 instead."
            ) from error
        raise LegacyCheckpointError(f"{path} is not a readable torch checkpoint ({error}); download it again.") from error
    if not isinstance(state_dict, Mapping):
        raise LegacyCheckpointError(f"{path} holds a {type(state_dict).__name__}, not a state dict.")
    return state_dict


def _plain(value):
    """Nested INC configs (OrderedDicts) as plain dicts; tuples stay tuples."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_plain(item) for item in value)
    return value


class _TupleSafeLoader(yaml.SafeLoader):
    """yaml's safe loader plus ``!!python/tuple``: neural-compressor dumped op keys as tuples."""


_TupleSafeLoader.add_constructor(
    "tag:yaml.org,2002:python/tuple", lambda loader, node: tuple(loader.construct_sequence(node))
)


def _read_best_configure_yaml(source, hub_kwargs: dict, weights_file: str) -> dict:
    path = resolve_file(source, BEST_CONFIGURE_FILE, hub_kwargs)
    if path is None:
        raise LegacyCheckpointError(
            f"{weights_file} has no {BEST_CONFIGURE_KEY!r} entry and {source} has no {BEST_CONFIGURE_FILE}: "
            "without neural-compressor's op configuration the int8 model cannot be rebuilt. Is this an INC checkpoint?"
        )
    with open(path, encoding="utf-8") as handle:
        try:
            return yaml.load(handle, Loader=_TupleSafeLoader)
        except yaml.YAMLError as error:
            raise LegacyCheckpointError(f"{path} is not a readable best_configure.yaml: {error}") from error


def _module_versions(state_dict) -> dict[str, int] | None:
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is None:
        return None
    return {prefix: entry["version"] for prefix, entry in metadata.items() if "version" in entry}


def clean_config(config: dict) -> dict:
    """config.json without the old writers' additions, which would mislead today's transformers."""
    return {key: value for key, value in config.items() if value not in _OLD_STACK_CONFIG_KEYS.get(key, ())}


def read_legacy_checkpoint(source, weights_file: str, kwargs: Mapping) -> LegacyCheckpoint:
    hub_kwargs = download_kwargs(kwargs)
    config = _read_json(resolve_file(source, CONFIG_FILE, hub_kwargs))
    inc_config_file = resolve_file(source, INC_CONFIG_FILE, hub_kwargs)
    inc_config = _read_json(inc_config_file) if inc_config_file else {}
    state_dict = load_weights_safely(weights_file)
    module_versions = _module_versions(state_dict)
    state_dict = dict(state_dict)
    if BEST_CONFIGURE_KEY in state_dict:
        best_configure = state_dict.pop(BEST_CONFIGURE_KEY)
    else:
        best_configure = _read_best_configure_yaml(source, hub_kwargs, weights_file)
    if not isinstance(best_configure, Mapping) or not isinstance(best_configure.get("op"), Mapping):
        raise LegacyCheckpointError(
            f"{weights_file}: best_configure must be a dict with an 'op' dict, got {type(best_configure).__name__}."
        )
    return LegacyCheckpoint(
        source=str(source),
        weights_file=weights_file,
        config=clean_config(config),
        best_configure=_plain(best_configure),
        state_dict=state_dict,
        module_versions=module_versions,
        inc_config=inc_config,
    )
