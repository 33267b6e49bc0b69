"""How a quantized model runs on this CPU: the int8 kernel plan of its layers and the dtype it computes in.

On CPUs with AMX-BF16 the default is to compute in bf16, as ``model.to(torch.bfloat16)`` would: the float
parameters that are not fallbacks (embeddings, norms) become bf16, int8 kernels take and write bf16, and the
whole model runs on the bf16 paths transformers already supports. A float32 fallback keeps its fp32 weight
and computes in fp32 (its input is cast up and its output back to bf16). Elsewhere the model computes in
fp32, where bf16 is emulated or slower than fp32 (docs/kernels.md). Saving writes the cast tensors in the
dtype they had (fp32, exactly upcast from what runs), so the checkpoint format never depends on the CPU.
"""

import dataclasses
import weakref

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D
from transformers.utils import logging

from . import kernels
from .bf16_linear import BFloat16Linear
from .int8_linear import Int8DynamicLinear
from .integer_layers import IntegerLinear, IntegerSelfAttention

logger = logging.get_logger(__name__)

COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
COMPUTE_DTYPE_CHOICES = ("auto", *COMPUTE_DTYPES)
_FLOAT_FALLBACK_TYPES = (nn.Linear, Conv1D)
_CAST_HOOKS = "_optimum_int8_fallback_casts"
_OUTPUT_DTYPE = "_optimum_int8_output_dtype"
_COMPUTE_DTYPE = "_optimum_int8_compute_dtype"
_SAVED_DTYPES = "_optimum_int8_saved_dtypes"
_SAVED_DTYPE = "_optimum_int8_saved_dtype"


@dataclasses.dataclass(frozen=True)
class RuntimeSettings:
    """What a model was configured to run with (``describe()`` for reports)."""

    kernel: kernels.KernelPlan
    compute_dtype: str

    def describe(self) -> str:
        return f"{self.kernel.describe()}, compute {self.compute_dtype}"


def resolve_compute_dtype(requested: str | None, capabilities: kernels.CpuCapabilities | None = None) -> str:
    """``auto``: bf16 on CPUs with AMX-BF16 (bf16 there is several times fp32), fp32 elsewhere."""
    requested = requested or "auto"
    if requested not in COMPUTE_DTYPE_CHOICES:
        raise ValueError(f"compute_dtype {requested!r} is unknown; choose one of {list(COMPUTE_DTYPE_CHOICES)}")
    if requested != "auto":
        return requested
    capabilities = capabilities or kernels.capabilities.current()
    return "bfloat16" if capabilities.amx_bf16 else "float32"


def loadable_kernel(kernel: str | None) -> str:
    """The kernel a loaded checkpoint runs on: the one it names, or ``auto`` (with a warning) where this CPU
    cannot run that one, so that a checkpoint saved on one CPU runs on any other."""
    try:
        kernels.plan(kernel)
    except kernels.KernelUnavailableError as error:
        logger.warning(f"this checkpoint asks for int8 kernel {kernel!r}, which cannot run here ({error}); "
                       "running it on this CPU's default kernel instead.")
        return "auto"
    return kernel or "auto"


def _cast_input_to_weight_dtype(module: nn.Module, args):
    x = args[0]
    dtype = module.weight.dtype
    if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != dtype:
        module.__dict__[_OUTPUT_DTYPE] = x.dtype
        return (x.to(dtype), *args[1:])
    module.__dict__.pop(_OUTPUT_DTYPE, None)
    return None


def _cast_output_to_input_dtype(module: nn.Module, args, output):
    dtype = module.__dict__.pop(_OUTPUT_DTYPE, None)
    return output.to(dtype) if dtype is not None else None


def _set_fallback_casts(module: nn.Module, enabled: bool) -> None:
    """An fp32 fallback in a bf16 model: fp32 in, fp32 GEMM, output in the caller's dtype."""
    for handle in module.__dict__.pop(_CAST_HOOKS, ()):
        handle.remove()
    if enabled:
        module.__dict__[_CAST_HOOKS] = (
            module.register_forward_pre_hook(_cast_input_to_weight_dtype),
            module.register_forward_hook(_cast_output_to_input_dtype),
        )


def _output_to_compute_dtype(module: nn.Module, args, output):
    """A module holding a tensor an fp32 fallback shares computes in fp32: its output goes on in the compute
    dtype. Once the model was cast (``.to(torch.float16)``), the output is already in the model's dtype."""
    dtype = module.__dict__[_COMPUTE_DTYPE]
    if isinstance(output, torch.Tensor) and output.dtype == torch.float32:
        return output.to(dtype)
    return None


# Upcast copies handed to state dicts, by the tensor they copy: a tensor tied under several names (an
# embedding shared by encoder and decoder) must come out as one tensor, or savers store it once per name.
# Weak values: a copy lives only as long as the state dict holding it.
_UPCASTS: "weakref.WeakValueDictionary[tuple, torch.Tensor]" = weakref.WeakValueDictionary()


def _state_dict_in_saved_dtypes(module: nn.Module, state_dict, prefix, local_metadata) -> None:
    for name, dtype in module.__dict__[_SAVED_DTYPES].items():
        key = prefix + name
        tensor = state_dict.get(key)
        if tensor is None or tensor.dtype == dtype:
            continue
        identity = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), dtype)
        upcast = _UPCASTS.get(identity)
        if upcast is None:
            upcast = tensor.to(dtype)
            _UPCASTS[identity] = upcast
        state_dict[key] = upcast


def _cast_float_tensors(module: nn.Module, dtype: torch.dtype, keep: set[int]) -> None:
    """Cast ``module``'s own float parameters and buffers (not its children's) to ``dtype``, except those in
    ``keep`` (ids of tensors an fp32 fallback shares, e.g. an embedding tied to an fp32 lm_head): a module
    holding one of those casts its output instead. Each cast tensor remembers the dtype it was loaded in,
    and the state dict writes it back in that dtype, so the checkpoint format stays the same."""
    for handle in module.__dict__.pop(_CAST_HOOKS, ()):
        handle.remove()
    module.__dict__.pop(_SAVED_DTYPES, None)
    kept, recorded = False, {}
    for tensors in (module._parameters, module._buffers):
        for name, tensor in tensors.items():
            if tensor is None or not tensor.is_floating_point() or tensor.is_meta:
                continue
            if id(tensor) in keep:
                kept = True
                continue
            saved = getattr(tensor, _SAVED_DTYPE, tensor.dtype)
            if tensor.dtype != dtype:
                tensor.data = tensor.data.to(dtype)
            if saved == dtype:
                tensor.__dict__.pop(_SAVED_DTYPE, None)
            else:
                setattr(tensor, _SAVED_DTYPE, saved)
                recorded[name] = saved
    hooks = []
    if kept and dtype != torch.float32:
        module.__dict__[_COMPUTE_DTYPE] = dtype
        hooks.append(module.register_forward_hook(_output_to_compute_dtype))
    if recorded:
        module.__dict__[_SAVED_DTYPES] = recorded
        hooks.append(module.register_state_dict_post_hook(_state_dict_in_saved_dtypes))
    if hooks:
        module.__dict__[_CAST_HOOKS] = tuple(hooks)


def configure(model: nn.Module, kernel: str | None = "auto", reduce_range: bool | None = None,
              compute_dtype: str | None = "auto") -> RuntimeSettings:
    """Put every int8 layer of ``model`` on the kernel plan, and the model on the compute dtype: quantized
    layers output it, the other float tensors (not fallbacks) are cast to it. Returns what was set."""
    plan = kernels.plan(kernel, reduce_range)
    dtype_name = resolve_compute_dtype(compute_dtype)
    dtype = COMPUTE_DTYPES[dtype_name]
    output_dtype = None if dtype == torch.float32 else dtype  # None: the input's dtype, as a float model runs
    fallbacks = [module for module in model.modules() if type(module) in _FLOAT_FALLBACK_TYPES]
    keep = {id(tensor) for module in fallbacks for tensor in module.parameters(recurse=False)}
    plans = {plan.activations: plan}
    for module in model.modules():
        if isinstance(module, Int8DynamicLinear):
            if module.activations is not None and module.activations not in plans:
                plans[module.activations] = kernels.plan(kernel, reduce_range, activations=module.activations)
            module.use_kernel(plans.get(module.activations))
            module.compute_dtype = output_dtype
        elif isinstance(module, BFloat16Linear):
            module.compute_dtype = output_dtype
        elif type(module) in _FLOAT_FALLBACK_TYPES:
            _set_fallback_casts(module, dtype != torch.float32)
        else:
            _cast_float_tensors(module, dtype, keep)
    return RuntimeSettings(plan, dtype_name)


def _integer_gemm_weight(module: nn.Module):
    """The packed weight of an integer-only GEMM ``module`` runs (the fused Q, K, V one for the self-attention; the
    projections inside it have none of their own), or None."""
    if isinstance(module, IntegerSelfAttention):
        return module.qkv
    return module.packed if isinstance(module, IntegerLinear) else None


def describe(model: nn.Module) -> str:
    """The kernel plans and compute dtypes the int8 layers of ``model`` run with, and the kernels of its integer-only
    GEMMs with their count, e.g. for a benchmark table."""
    seen, integer_gemms = {}, {}
    for module in model.modules():
        if isinstance(module, Int8DynamicLinear) and module.kernel_plan is not None:
            dtype = str(module.compute_dtype or torch.float32).removeprefix("torch.")
            text = f"{module.kernel_plan.describe()}, compute {dtype}"
            seen[text] = seen.get(text, 0) + 1
        packed = _integer_gemm_weight(module)
        if packed is not None:
            integer_gemms[packed.kernel] = integer_gemms.get(packed.kernel, 0) + 1
    if integer_gemms:
        seen["integer GEMMs: " + ", ".join(f"{kernel} x{count}" for kernel, count in integer_gemms.items())] = 1
    return "; ".join(seen) if seen else ""
