"""Find the Linear modules of a model, resolve requested names, swap modules and untie them."""

import difflib
import fnmatch

from torch import nn
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

FLOAT_LINEAR_TYPES = (nn.Linear, Conv1D)


def find_float_linears(model: nn.Module) -> dict[str, nn.Module]:
    """Every module whose type is exactly ``nn.Linear`` or transformers' ``Conv1D``, by qualified name.

    Subclasses are skipped on purpose: they may override ``forward`` in ways int8 would silently break.
    """
    return {name: module for name, module in model.named_modules() if type(module) in FLOAT_LINEAR_TYPES}


def _suggestion(name: str, candidates) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.5)
    return f" Did you mean {close}?" if close else ""


def resolve_module_names(requested: list[str], linear_names, what: str) -> list[str]:
    """Expand exact names and fnmatch globs against ``linear_names``; each entry must match something."""
    linear_names = list(linear_names)
    resolved = []
    for entry in requested:
        matches = [entry] if entry in linear_names else fnmatch.filter(linear_names, entry)
        if not matches:
            raise ValueError(
                f"{what}: {entry!r} matches no Linear module of this model.{_suggestion(entry, linear_names)} "
                f"The model has {len(linear_names)} Linear modules, e.g. {linear_names[:3]}."
            )
        resolved.extend(m for m in matches if m not in resolved)
    return resolved


def check_module_names(names, linear_names, where: str) -> None:
    """Raise if a name from a checkpoint manifest is not a Linear module of the model being built."""
    linear_names = set(linear_names)
    for name in names:
        if name not in linear_names:
            raise ValueError(
                f"{where} names {name!r}, which is not a Linear module of this model "
                f"(architecture mismatch or edited config).{_suggestion(name, linear_names)}"
            )


def untie_modules(model: nn.Module, names) -> None:
    """Drop tied-weight entries that touch the given modules, in the model and its sub-models.

    An int8 module has no ``weight`` parameter to tie, so transformers must neither tie it nor strip it
    from the saved state dict. Its float twin (e.g. the shared embedding) stays as it is.
    """
    prefixes = tuple(f"{name}." for name in names)
    for sub_name, submodule in model.named_modules():
        if not isinstance(submodule, PreTrainedModel):
            continue
        tied = getattr(submodule, "all_tied_weights_keys", None)
        if not tied:
            continue
        sub_prefix = f"{sub_name}." if sub_name else ""
        for target, source in list(tied.items()):
            if f"{sub_prefix}{target}".startswith(prefixes) or f"{sub_prefix}{source}".startswith(prefixes):
                del tied[target]


def tied_parameter_names(model: nn.Module) -> set[str]:
    """All parameter names that take part in weight tying (either side)."""
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    return set(tied) | set(tied.values())
