"""The transformers ``HfQuantizer`` for our quant_method, and ``quantize_model`` built on the same hooks.

Registered on import of ``optimum_int8``, so plain ``AutoModelFor*.from_pretrained`` restores int8
checkpoints (pre-quantized) or quantizes fp32 weights while they load (``quantization_config=Int8Config()``).
``quantize_model`` runs the very same hooks on a model already in memory, so both give identical weights.
"""

import copy
import dataclasses
import os
import re
import types

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel
from transformers.core_model_loading import ConversionOps
from transformers.pytorch_utils import Conv1D
from transformers.quantizers.auto import (
    AUTO_QUANTIZATION_CONFIG_MAPPING,
    AUTO_QUANTIZER_MAPPING,
    register_quantization_config,
    register_quantizer,
)
from transformers.quantizers.base import HfQuantizer
from transformers.utils import logging

from . import linear_modules
from ._memory import FilePageReleaser, trim_heap
from .checkpoint import (
    LEGACY_ORIGIN,
    CheckpointError,
    read_tensor_headers,
    tensor_files,
    validate_float_tensors,
    validate_module_tensors,
    validate_values,
)
from .configuration import QUANT_METHOD, SCHEME_IBERT, FallbackManifest, Int8Config
from .hub import push_to_hub
from .nn import BFloat16Linear, Int8DynamicLinear, kernels, runtime
from .saving import atomic_save_pretrained

logger = logging.get_logger(__name__)

MANIFEST_SOURCE = "config.json quantization_config.manifest"


def _check_cpu_device_map(device_map) -> None:
    if device_map is None:
        return
    devices = set(device_map.values()) if isinstance(device_map, dict) else {device_map}
    if any(str(device) != "cpu" for device in devices):
        raise ValueError(
            f"optimum-int8 int8 layers run on CPU kernels only, but device_map={device_map!r} was passed. "
            "Load with device_map=None (or 'cpu')."
        )


CONVERTED_CLASSES = (Int8DynamicLinear, BFloat16Linear)
_CLASS_BY_FALLBACK_DTYPE = {"bfloat16": BFloat16Linear}


class QuantizeWeightOnLoad(ConversionOps):
    """Convert one fp32 Linear weight (to int8, or to a bf16 fallback) as it streams out of the checkpoint."""

    def __init__(self, hf_quantizer: "Int8HfQuantizer"):
        self.hf_quantizer = hf_quantizer

    def convert(self, input_dict, *args, model=None, full_layer_name=None, missing_keys=None, **kwargs):
        tensor = next(iter(input_dict.values()))
        tensor = tensor[0] if isinstance(tensor, list) else tensor
        module_name = full_layer_name.rsplit(".", 1)[0]
        float_module = model.get_submodule(module_name)
        weight = tensor.t() if isinstance(float_module, Conv1D) else tensor
        target_class = self.hf_quantizer.target_classes[module_name]
        _check_finite(module_name, weight, float_module.bias)
        model.set_submodule(module_name, target_class.from_weight(weight, float_module.bias))
        self.hf_quantizer.file_page_releaser().release(tensor)
        trim_heap()
        if missing_keys is not None:
            missing_keys.discard(full_layer_name)
        return {}


class Int8HfQuantizer(HfQuantizer):
    """Swaps Linear modules for ``Int8DynamicLinear`` (and bf16 fallbacks) around transformers' weight loading."""

    requires_calibration = False

    def __new__(cls, quantization_config: Int8Config | None = None, **kwargs):
        # transformers maps our quant_method to this one class; the ibert scheme has its own hooks.
        # copy.deepcopy of a quantized model calls __new__ without arguments: the class is already right then.
        if cls is Int8HfQuantizer and quantization_config is not None and quantization_config.scheme == SCHEME_IBERT:
            from .ibert.quantizer import IBertHfQuantizer

            cls = IBertHfQuantizer
        return super().__new__(cls)

    def __init__(self, quantization_config: Int8Config, **kwargs):
        super().__init__(copy.deepcopy(quantization_config), **kwargs)
        # Model module name -> the class it becomes: every int8 module and every bf16 fallback.
        self.target_classes: dict[str, type] = {}
        self._fallback_modules: dict[str, str] = {}
        self._checkpoint_files: list[str] = []
        self._tensor_files: dict[str, str] = {}
        self._releaser: FilePageReleaser | None = None

    def validate_environment(self, device_map=None, **kwargs):
        # A checkpoint's forced kernel may be missing on this CPU (runtime.loadable_kernel); a request may not.
        kernel = "auto" if self.pre_quantized else self.quantization_config.kernel
        kernels.plan(kernel, self.quantization_config.reduce_range)
        _check_cpu_device_map(device_map)

    def update_dtype(self, dtype):
        if dtype is not None and dtype != torch.float32:
            logger.info(
                f"optimum-int8 keeps the float parameters (norms, embeddings, fp32 fallbacks) in float32 and "
                f"ignores dtype={dtype}; Int8Config(compute_dtype=...) chooses what the model computes in."
            )
        return torch.float32

    def _process_model_before_weight_loading(self, model, checkpoint_files=None, **kwargs):
        linears = linear_modules.find_float_linears(model)
        if not linears:
            raise ValueError(f"{type(model).__name__} has no nn.Linear or Conv1D modules: there is nothing to quantize to int8.")
        self._checkpoint_files = [os.path.realpath(path) for path in checkpoint_files or []]
        if self.pre_quantized:
            self._prepare_int8_skeleton(model, linears, checkpoint_files or [])
        else:
            self._plan_conversion(linears)
        return model

    def _plan_conversion(self, linears):
        config = self.quantization_config
        fp32 = linear_modules.resolve_module_names(config.modules_in_fp32, linears, "Int8Config.modules_in_fp32")
        bf16 = linear_modules.resolve_module_names(config.modules_in_bf16, linears, "Int8Config.modules_in_bf16")
        both = sorted(set(fp32) & set(bf16))
        if both:
            raise ValueError(
                f"Int8Config names {both} in both modules_in_fp32 and modules_in_bf16; give each module one precision."
            )
        fallback_dtypes = dict.fromkeys(fp32, "float32") | dict.fromkeys(bf16, "bfloat16")
        self._fallback_modules = {name: fallback_dtypes[name] for name in linears if name in fallback_dtypes}
        if len(self._fallback_modules) == len(linears):
            raise ValueError(
                f"Int8Config keeps all {len(linears)} Linear modules in float (modules_in_fp32/modules_in_bf16): "
                "nothing would be int8."
            )
        self.target_classes = {
            name: Int8DynamicLinear if name not in fallback_dtypes else _CLASS_BY_FALLBACK_DTYPE[fallback_dtypes[name]]
            for name in linears
            if fallback_dtypes.get(name) != "float32"
        }

    def _prepare_int8_skeleton(self, model, linears, checkpoint_files):
        manifest = self.quantization_config.manifest
        if manifest is None:
            raise CheckpointError(
                f"{MANIFEST_SOURCE} is missing: a pre-quantized optimum-int8 checkpoint must list its int8 modules."
            )
        to_model_name = _checkpoint_to_model_names(model, linears, [*manifest.int8_modules, *manifest.fallback_modules])
        int8_modules = {name: to_model_name[name] for name in manifest.int8_modules if name in to_model_name}
        fallback_modules = {to_model_name[n]: d for n, d in manifest.fallback_modules.items() if n in to_model_name}
        linear_modules.check_module_names(int8_modules.values(), linears, f"{MANIFEST_SOURCE}.int8_modules")
        linear_modules.check_module_names(fallback_modules, linears, f"{MANIFEST_SOURCE}.fallback_modules")
        checkpoint_classes = dict.fromkeys(manifest.int8_modules, Int8DynamicLinear) | {
            name: _CLASS_BY_FALLBACK_DTYPE[dtype]
            for name, dtype in manifest.fallback_modules.items()
            if dtype in _CLASS_BY_FALLBACK_DTYPE
        }
        targets = {name: (to_model_name[name], cls) for name, cls in checkpoint_classes.items() if name in to_model_name}
        layouts = {}
        for checkpoint_name, (name, cls) in targets.items():
            out_features, in_features = _out_in(linears[name])
            layouts[checkpoint_name] = (cls.precision, cls.state_dict_layout(out_features, in_features, linears[name].bias is not None))
        if checkpoint_files:
            listed = {
                cls.marker_tensor: (cls.precision, {name for name, c in checkpoint_classes.items() if c is cls})
                for cls in CONVERTED_CLASSES
            }
            headers = read_tensor_headers(checkpoint_files)
            validate_module_tensors(headers, layouts, listed, MANIFEST_SOURCE)
            module_types = {name: type(module).__name__ for name, module in model.named_modules()}
            prefix = f"{model.base_model_prefix}." if model.base_model_prefix else None
            shapes = {name: tensor.shape for name, tensor in model.state_dict().items()}
            converted = {name: set(layout) for name, (_, layout) in layouts.items()}
            validate_float_tensors(headers, shapes, module_types, converted, prefix, MANIFEST_SOURCE)
            self._tensor_files = tensor_files(headers, module_types, prefix)
        with torch.device("meta"):
            for name, cls in targets.values():
                out_features, in_features = _out_in(linears[name])
                model.set_submodule(name, cls(in_features, out_features, bias=linears[name].bias is not None))
        self.target_classes = dict(targets.values())
        linear_modules.untie_modules(model, self.target_classes)
        # In this model's names, so that a re-save writes a manifest that matches its tensors.
        self.quantization_config.manifest = dataclasses.replace(
            manifest, int8_modules=list(int8_modules.values()), fallback_modules=fallback_modules
        )

    def file_page_releaser(self) -> FilePageReleaser:
        """Built on first use, once transformers has mmap'd the checkpoint files."""
        if self._releaser is None:
            self._releaser = FilePageReleaser(self._checkpoint_files)
        return self._releaser

    def param_needs_quantization(self, model, param_name: str, **kwargs) -> bool:
        if self.pre_quantized or not param_name.endswith(".weight"):
            return False
        module_name = param_name[: -len(".weight")]
        # Tied weights are converted after loading, once transformers has tied them.
        return module_name in self.target_classes and param_name not in linear_modules.tied_parameter_names(model)

    def get_quantize_ops(self):
        return QuantizeWeightOnLoad(self)

    def postprocess_model(self, model, **kwargs):
        # Before any scheme's hook derives tensors of its own: what transformers initialised at random is still
        # unmarked. (A state_dict passed in memory, as the legacy builder does, is its caller's to check.)
        if self.pre_quantized and self._checkpoint_files:
            _check_nothing_missing(model, self._checkpoint_files)
        return super().postprocess_model(model, **kwargs)

    def _process_model_after_weight_loading(self, model, **kwargs):
        config = self.quantization_config
        if self.pre_quantized:
            self._check_and_pack_loaded_modules(model)
        else:
            self._convert_remaining(model)
        if config.scheme != SCHEME_IBERT:  # the integer-only scheme fixes its own arithmetic and manifest
            kernel = runtime.loadable_kernel(config.kernel) if self.pre_quantized else config.kernel
            settings = runtime.configure(model, kernel, config.reduce_range, config.compute_dtype)
            if not self.pre_quantized:
                config.manifest = FallbackManifest(
                    int8_modules=[name for name, cls in self.target_classes.items() if cls is Int8DynamicLinear],
                    fallback_modules=dict(self._fallback_modules),
                    kernel=settings.kernel.describe(),
                    compute_dtype=settings.compute_dtype,
                )
        model.save_pretrained = types.MethodType(atomic_save_pretrained, model)
        model.push_to_hub = types.MethodType(push_to_hub, model)
        return model

    def _check_and_pack_loaded_modules(self, model):
        releaser = self.file_page_releaser()
        manifest = self.quantization_config.manifest
        legacy_codes = manifest is not None and LEGACY_ORIGIN in manifest.created_with
        for name in tqdm(self.target_classes, desc="Packing int8 and bf16 weights", unit="module", leave=False):
            module = model.get_submodule(name)
            layout = module.state_dict_layout(module.out_features, module.in_features, module.bias is not None)
            loaded = [getattr(module, tensor_name) for tensor_name in layout]
            for tensor_name, tensor in zip(layout, loaded):
                if tensor.is_meta or not getattr(tensor, "_is_hf_initialized", False):
                    raise CheckpointError(
                        f"tensor {name}.{tensor_name} was not loaded from the checkpoint files; "
                        f"the weights do not match {MANIFEST_SOURCE}."
                    )
            validate_values(name, dict(zip(layout, loaded)), self._tensor_files, legacy_codes=legacy_codes)
            if isinstance(module, CONVERTED_CLASSES):
                module.pack()
                for tensor in loaded:
                    releaser.release(tensor)
                trim_heap()

    def _convert_remaining(self, model):
        """Convert the modules not converted while streaming (tied weights, or all of them in ``quantize_model``)."""
        linears = linear_modules.find_float_linears(model)
        for name, target_class in tqdm(self.target_classes.items(), desc="Quantizing Linear modules to int8", unit="module", leave=False):
            module = model.get_submodule(name)
            if name in linears:
                _check_finite(name, module.weight, module.bias)
                model.set_submodule(name, target_class.from_float(module))
                continue
            if module.bias is not None and module.bias.is_meta:
                raise CheckpointError(f"tensor {name}.bias was not found in the checkpoint being quantized.")
            if isinstance(module, CONVERTED_CLASSES):
                module.pack()
                trim_heap()
        linear_modules.untie_modules(model, self.target_classes)

    def is_serializable(self, *args, **kwargs):
        return True

    @property
    def is_trainable(self):
        return False


def _check_finite(module_name: str, weight, bias) -> None:
    """A NaN or infinite weight would quantize to garbage codes (or a NaN scale) silently: name the module."""
    for what, tensor in (("weight", weight), ("bias", bias)):
        if tensor is not None and not tensor.is_meta and not torch.isfinite(tensor).all():
            count = int((~torch.isfinite(tensor)).sum())
            raise ValueError(
                f"{module_name}.{what} holds {count} NaN or infinite value(s); quantizing it would give a wrong "
                f"model. Fix or retrain the fp32 model, or keep {module_name!r} out of quantization (modules_in_fp32)."
            )


def _check_nothing_missing(model, checkpoint_files) -> None:
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


def _checkpoint_to_model_names(model, linears, checkpoint_names) -> dict[str, str]:
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


def _out_in(module) -> tuple[int, int]:
    if isinstance(module, Conv1D):
        return module.nf, module.weight.shape[0]
    return module.out_features, module.in_features


def quantize_model(model: PreTrainedModel, config: Int8Config | None = None, calibration_data=None) -> PreTrainedModel:
    """Quantize a loaded fp32 transformers model in place (and return it) with dynamic int8 Linear layers.

    The model keeps its class; ``config.quantization_config`` gets the manifest of what is int8 and what
    stayed fp32, so ``save_pretrained`` writes a checkpoint that ``from_pretrained`` restores.
    With ``Int8Config(scheme="ibert")`` the encoder becomes integer-only instead, with static activation
    scales measured on ``calibration_data``: an iterable of model input dicts (docs/ibert.md).
    """
    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"quantize_model expects a transformers PreTrainedModel, got {type(model).__name__}")
    if getattr(model, "is_quantized", False):
        raise ValueError(
            f"{type(model).__name__} is already quantized (quant_method={getattr(model, 'quantization_method', None)!r}); "
            "quantize the fp32 model instead."
        )
    devices = {parameter.device.type for parameter in model.parameters()}
    if devices - {"cpu"}:
        raise ValueError(f"quantize_model runs on CPU; the model has parameters on {sorted(devices)}. Call model.cpu() first.")
    config = copy.deepcopy(config) if config is not None else Int8Config()
    config.manifest = None
    if calibration_data is not None and config.scheme != SCHEME_IBERT:
        raise ValueError(f"calibration_data sets static activation scales; the {config.scheme!r} scheme quantizes activations per call and takes none.")
    quantizer = Int8HfQuantizer(config, pre_quantized=False, calibration_data=calibration_data)
    quantizer.validate_environment()
    try:
        quantizer.preprocess_model(model, dtype=model.dtype)
    except BaseException:
        quantizer.remove_quantization_config(model)
        raise
    model.hf_quantizer = quantizer
    quantizer.postprocess_model(model)
    return model


def register() -> None:
    """Make transformers' Auto loaders recognise ``quant_method: optimum_int8`` (idempotent)."""
    if QUANT_METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        register_quantization_config(QUANT_METHOD)(Int8Config)
    if QUANT_METHOD not in AUTO_QUANTIZER_MAPPING:
        register_quantizer(QUANT_METHOD)(Int8HfQuantizer)
