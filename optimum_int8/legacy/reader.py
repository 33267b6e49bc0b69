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


# Bounds on best_configure: real ones nest 4 levels deep and hold about 15 entries per op. A pickle or a
# yaml file can share one container many times over ("billion laughs"): every visit counts.
MAX_DEPTH = 32
MAX_ENTRIES = 1_000_000


class LegacyCheckpointError(ValueError):
    """A legacy INC checkpoint is malformed, unsafe to read, or uses a layout optimum-int8 cannot rebuild."""


def _short(value, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, without building the whole repr of a huge structure."""
    if isinstance(value, (str, int, float, bool, type(None))):
        text = repr(value)
    elif isinstance(value, tuple) and len(value) <= 4 and all(isinstance(item, (str, int, float, bool)) for item in value):
        text = repr(value)
    else:
        return f"a {type(value).__name__}"
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


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
    except RecursionError:
        raise LegacyCheckpointError(f"{path} nests JSON deeper than its parser allows; it is not a model config.") from None


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


def _plain(value, source: str):
    """Nested INC configs (OrderedDicts) as plain dicts; tuples stay tuples. At most ``MAX_DEPTH`` levels and
    ``MAX_ENTRIES`` visits, so a hostile structure fails in bounded time and memory."""
    budget = [MAX_ENTRIES]

    def plain(item, depth: int):
        budget[0] -= 1
        if budget[0] < 0:
            raise LegacyCheckpointError(
                f"{source}: best_configure holds more than {MAX_ENTRIES} entries (shared ones counted each time they "
                "are reached); neural-compressor never wrote such a configuration."
            )
        if depth > MAX_DEPTH:
            raise LegacyCheckpointError(f"{source}: best_configure nests deeper than {MAX_DEPTH} levels; it is not a "
                                        "neural-compressor configuration.")
        if isinstance(item, Mapping):
            return {key: plain(entry, depth + 1) for key, entry in item.items()}
        if isinstance(item, list):
            return [plain(entry, depth + 1) for entry in item]
        if isinstance(item, tuple):
            return tuple(plain(entry, depth + 1) for entry in item)
        return item

    return plain(value, 0)


def _expect(ok: bool, source: str, where: str, must: str, value) -> None:
    if not ok:
        raise LegacyCheckpointError(f"{source}: best_configure{where} must be {must}, got {_short(value)}.")


def _check_best_configure(config: dict, source: str) -> None:
    """The fields optimum-int8 reads, with the types neural-compressor wrote them in."""
    for key in ("framework", "approach"):
        _expect(config.get(key) is None or isinstance(config[key], str), source, f"[{key!r}]", "a string", config.get(key))
    for key in ("recipe_cfgs", "get_attr"):
        _expect(config.get(key) is None or isinstance(config[key], dict), source, f"[{key!r}]", "a dict", config.get(key))
    recipes = config.get("recipe_cfgs") or {}
    _expect(recipes.get("smooth_quant_args") is None or isinstance(recipes["smooth_quant_args"], dict), source,
            "['recipe_cfgs']['smooth_quant_args']", "a dict", recipes.get("smooth_quant_args"))
    modules = config.get("fx_sub_module_list")
    _expect(modules is None or (isinstance(modules, list) and all(isinstance(name, str) for name in modules)), source,
            "['fx_sub_module_list']", "a list of module names", modules)
    bf16 = config.get("bf16_ops_list")
    _expect(bf16 is None or (isinstance(bf16, list) and all(
        isinstance(entry, (list, tuple)) and entry and isinstance(entry[0], str) for entry in bf16)), source,
        "['bf16_ops_list']", "a list of (name, type) pairs", bf16)
    for attr, value in (config.get("get_attr") or {}).items():
        _expect(isinstance(attr, str) and isinstance(value, (int, float)) and not isinstance(value, bool), source,
                f"['get_attr'][{_short(attr)}]", "a number", value)
    for key, op in config["op"].items():
        _expect(isinstance(key, tuple) and len(key) == 2 and all(isinstance(part, str) for part in key), source,
                "['op'] keys", "(name, type) pairs of strings", key)
        _expect(isinstance(op, dict), source, f"['op'][{_short(key)}]", "a dict", op)
        for part in ("weight", "activation"):
            settings = op.get(part)
            _expect(settings is None or isinstance(settings, dict), source, f"['op'][{_short(key)}][{part!r}]", "a dict", settings)
            for field in ("dtype", "quant_mode"):
                value = (settings or {}).get(field)
                _expect(value is None or isinstance(value, str) or (isinstance(value, (list, tuple)) and all(
                    isinstance(item, str) for item in value)), source, f"['op'][{_short(key)}][{part!r}][{field!r}]",
                    "a string or a list of strings", value)


def _check_state_dict(state_dict: Mapping, path: str) -> None:
    """Tensors, dtypes, numbers and packed (weight, bias) pairs: what torch.ao's modules put in a state dict."""
    for key, value in state_dict.items():
        if key == BEST_CONFIGURE_KEY:
            continue
        packed = isinstance(value, tuple) and len(value) <= 4 and all(
            item is None or isinstance(item, (torch.Tensor, int, float)) for item in value)
        if not (isinstance(key, str) and (isinstance(value, (torch.Tensor, torch.dtype, int, float)) or packed)):
            raise LegacyCheckpointError(
                f"{path}: state dict entry {_short(key)} is {_short(value)}, not a tensor; this is not a state dict "
                "neural-compressor wrote."
            )


class _TupleSafeLoader(yaml.SafeLoader):
    """yaml's safe loader plus ``!!python/tuple``: neural-compressor dumped op keys as tuples."""


_TupleSafeLoader.add_constructor(
    "tag:yaml.org,2002:python/tuple", lambda loader, node: tuple(loader.construct_sequence(node))
)


def _read_best_configure_yaml(source, hub_kwargs: dict, weights_file: str) -> tuple[dict, str]:
    path = resolve_file(source, BEST_CONFIGURE_FILE, hub_kwargs)
    if path is None:
        raise LegacyCheckpointError(
            f"{weights_file} has no {BEST_CONFIGURE_KEY!r} entry and {source} has no {BEST_CONFIGURE_FILE}: "
            "without neural-compressor's op configuration the int8 model cannot be rebuilt. Is this an INC checkpoint?"
        )
    with open(path, encoding="utf-8") as handle:
        try:
            return yaml.load(handle, Loader=_TupleSafeLoader), path
        except yaml.YAMLError as error:
            raise LegacyCheckpointError(f"{path} is not a readable best_configure.yaml: {str(error)[:300]}") from error
        except RecursionError:
            raise LegacyCheckpointError(f"{path} nests deeper than a yaml parser allows; it is not a best_configure.yaml.") from None


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
    _check_state_dict(state_dict, weights_file)
    module_versions = _module_versions(state_dict)
    state_dict = dict(state_dict)
    if BEST_CONFIGURE_KEY in state_dict:
        best_configure, best_configure_file = state_dict.pop(BEST_CONFIGURE_KEY), weights_file
    else:
        best_configure, best_configure_file = _read_best_configure_yaml(source, hub_kwargs, weights_file)
    if not isinstance(best_configure, Mapping) or not isinstance(best_configure.get("op"), Mapping):
        raise LegacyCheckpointError(
            f"{best_configure_file}: best_configure must be a dict with an 'op' dict, got {type(best_configure).__name__}."
        )
    best_configure = _plain(best_configure, best_configure_file)
    _check_best_configure(best_configure, best_configure_file)
    return LegacyCheckpoint(
        source=str(source),
        weights_file=weights_file,
        config=clean_config(config),
        best_configure=best_configure,
        state_dict=state_dict,
        module_versions=module_versions,
        inc_config=inc_config,
    )
