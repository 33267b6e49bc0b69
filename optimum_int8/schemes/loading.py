"""Checks and name mapping every scheme's transformers quantizer hooks share (Linear schemes and I-BERT)."""

import os
import re

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..checkpoint import CheckpointError

MANIFEST_SOURCE = "config.json quantization_config.manifest"


def check_cpu_device_map(device_map) -> None:
    if device_map is None:
        return
    devices = set(device_map.values()) if isinstance(device_map, dict) else {device_map}
    if any(str(device) != "cpu" for device in devices):
        raise ValueError(
            f"optimum-int8 int8 layers run on CPU kernels only, but device_map={device_map!r} was passed. "
            "Load with device_map=None (or 'cpu')."
        )


def check_finite(module_name: str, weight, bias) -> None:
    """A NaN or infinite weight would quantize to garbage codes (or a NaN scale) silently: name the module."""
    for what, tensor in (("weight", weight), ("bias", bias)):
        if tensor is not None and not tensor.is_meta and not torch.isfinite(tensor).all():
            count = int((~torch.isfinite(tensor)).sum())
            raise ValueError(
                f"{module_name}.{what} holds {count} NaN or infinite value(s); quantizing it would give a wrong "
                f"model. Fix or retrain the fp32 model, or keep {module_name!r} out of quantization (modules_in_fp32)."
            )


def check_nothing_missing(model, checkpoint_files) -> None:
    """Every persistent float tensor came from the files: transformers would initialise a missing one at random."""
    ignored = [re.compile(pattern) for pattern in model._keys_to_ignore_on_load_missing or ()]
    missing = []
    for module_name, module in model.named_modules():
        tensors = [*module._parameters.items(), *((name, buffer) for name, buffer in module._buffers.items()
                                                  if name not in module._non_persistent_buffers_set)]
        for name, tensor in tensors:
            key = f"{module_name}.{name}" if module_name else name
            if tensor is not None and not getattr(tensor, "_is_hf_initialized", False) and not any(p.search(key) for p in ignored):
                missing.append(key)
    if missing:
        files = ", ".join(os.path.basename(path) for path in checkpoint_files) or "the checkpoint files"
        shown = ", ".join(repr(key) for key in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise CheckpointError(
            f"{files} lack tensor(s) {shown} of the model config.json describes; loading would fill them with random "
            "values. The checkpoint is incomplete, or its config.json belongs to another model."
        )


def checkpoint_to_model_names(model, linears, checkpoint_names) -> dict[str, str]:
    """Map manifest module names to this model's names across the base-model prefix, as transformers does.

    A task checkpoint loaded into its base model (``INCModel``) has names under ``base_model_prefix``
    and head modules the base model lacks (those are dropped); a base checkpoint loaded into a task
    model lacks the prefix. Names that match neither way are kept, so validation can reject them.
    """
    prefix = f"{model.base_model_prefix}." if model.base_model_prefix else None
    if prefix is None or any(name in linears for name in checkpoint_names):
        return {name: name for name in checkpoint_names}
    if any(name.startswith(prefix) for name in checkpoint_names):
        return {name: name[len(prefix):] for name in checkpoint_names if name.startswith(prefix)}
    if any(prefix + name in linears for name in checkpoint_names):
        return {name: prefix + name for name in checkpoint_names}
    return {name: name for name in checkpoint_names}


def out_in(module) -> tuple[int, int]:
    """(out_features, in_features) of an ``nn.Linear`` or a transformers ``Conv1D``."""
    if isinstance(module, Conv1D):
        return module.nf, module.weight.shape[0]
    return module.out_features, module.in_features


_ALIGNMENT = 64


def align_float_linears(model) -> None:
    """Give the float Linear modules that stayed float (task heads, fp32 fallbacks) 64-byte aligned weights.

    transformers leaves a loaded tensor where the safetensors file has it (8-byte aligned in the mmap'd file);
    the BLAS of some CPUs takes another code path for an unaligned operand, so a reloaded head computed
    differently from the model that was saved (a 32-wide classifier by 1e-9 on an AMD EPYC). An aligned copy
    keeps reloading bit-exact; the Parameter object stays, so tied weights stay tied."""
    for module in model.modules():
        if type(module) in (nn.Linear, Conv1D):
            for parameter in module.parameters(recurse=False):
                if not parameter.is_meta and parameter.data_ptr() % _ALIGNMENT:
                    parameter.data = parameter.data.clone()
