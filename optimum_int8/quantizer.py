"""The transformers ``HfQuantizer`` for our quant_method, and ``quantize_model`` built on the same hooks.

Registered on import of ``optimum_int8``, so plain ``AutoModelFor*.from_pretrained`` restores int8
checkpoints (pre-quantized) or quantizes fp32 weights while they load (``quantization_config=Int8Config()``).
``quantize_model`` runs the very same hooks on a model already in memory, so both give identical weights.
"""

import copy
import dataclasses
import itertools
import os
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

from . import generation, linear_modules
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
from .configuration import QUANT_METHOD, CalibrationRecord, FallbackManifest, Int8Config
from .hub import push_to_hub
from .nn import BFloat16Linear, kernels, runtime
from .saving import atomic_save_pretrained
from .schemes import SCHEMES, calibration, get_scheme
from .schemes.loading import (
    MANIFEST_SOURCE,
    align_float_linears,
    check_cpu_device_map,
    check_finite,
    check_nothing_missing,
    checkpoint_to_model_names,
    out_in,
)

logger = logging.get_logger(__name__)

_CLASS_BY_FALLBACK_DTYPE = {"bfloat16": BFloat16Linear}
# Every module class a Linear scheme or a bf16 fallback puts in place of a float Linear.
CONVERTED_CLASSES = (*(s.module_class for s in SCHEMES.values() if s.module_class is not None), BFloat16Linear)


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
        check_finite(module_name, weight, float_module.bias)
        model.set_submodule(module_name, self.hf_quantizer.convert_module(module_name, weight, float_module.bias))
        self.hf_quantizer.file_page_releaser().release(tensor)
        trim_heap()
        if missing_keys is not None:
            missing_keys.discard(full_layer_name)
        return {}


class Int8HfQuantizer(HfQuantizer):
    """Swaps Linear modules for their scheme's int8 modules (and bf16 fallbacks) around transformers' weight loading."""

    requires_calibration = False

    def __new__(cls, quantization_config: Int8Config | None = None, **kwargs):
        # transformers maps our quant_method to this one class; a scheme may name hooks of its own (ibert).
        # copy.deepcopy of a quantized model calls __new__ without arguments: the class is already right then.
        if cls is Int8HfQuantizer and quantization_config is not None:
            cls = get_scheme(quantization_config.scheme).quantizer_class() or cls
        return super().__new__(cls)

    def __init__(self, quantization_config: Int8Config, calibration_data=None, **kwargs):
        super().__init__(copy.deepcopy(quantization_config), **kwargs)
        self.calibration_data = calibration_data
        # Model module name -> the class it becomes: every int8 module and every bf16 fallback.
        self.target_classes: dict[str, type] = {}
        # Model module name -> scheme name, for every int8 module.
        self.module_schemes: dict[str, str] = {}
        self._calibration: dict[str, calibration.ModuleCalibration] = {}
        self._calibration_record: CalibrationRecord | None = None
        self._fallback_modules: dict[str, str] = {}
        self._checkpoint_files: list[str] = []
        self._tensor_files: dict[str, str] = {}
        self._releaser: FilePageReleaser | None = None

    def validate_environment(self, device_map=None, **kwargs):
        # A checkpoint's forced kernel may be missing on this CPU (runtime.loadable_kernel); a request may not.
        kernel = "auto" if self.pre_quantized else self.quantization_config.kernel
        config = self.quantization_config
        for scheme in {config.scheme, *config.module_schemes.values()}:
            activations = get_scheme(scheme).module_class.activations
            if activations is not None:
                kernels.plan(kernel, config.reduce_range, activations=activations)
        check_cpu_device_map(device_map)

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
            self._calibrate(model)
        return model

    def _calibrate(self, model):
        config = self.quantization_config
        if self.calibration_data is None:
            if config.needs_calibration_data:
                raise ValueError(
                    f"Int8Config(scheme={config.scheme!r}"
                    + (f", smoothquant_alpha={config.smoothquant_alpha!r}" if config.smoothquant_alpha is not None else "")
                    + ") needs calibration data, which quantizing while loading cannot take: load the fp32 model, then "
                    "call quantize_model(model, config, calibration_data=batches) (docs/schemes.md)."
                )
            return
        if any(not isinstance(p, torch.Tensor) or p.is_meta for p in model.parameters()):
            raise ValueError("calibration needs the model's float weights loaded: use quantize_model on a loaded model.")
        qmax = 127 if kernels.plan(config.kernel, config.reduce_range).reduce_range else 255
        schemes = {name: get_scheme(scheme) for name, scheme in self.module_schemes.items()}
        self._calibration, batches, alphas = calibration.calibrate(
            model, schemes, self.calibration_data, config.smoothquant_alpha, config.observer, qmax
        )
        default_observer = next((s.observers[0] for s in schemes.values() if s.observers), None)
        self._calibration_record = CalibrationRecord(
            samples=batches,
            observer=(config.observer or default_observer) if default_observer else None,
            smoothquant_alpha=config.smoothquant_alpha,
            module_alphas=alphas if config.smoothquant_alpha == "auto" else {},
        )

    def convert_module(self, name: str, weight: torch.Tensor, bias):
        """The int8 module (or bf16 fallback) that float module ``name`` becomes, unpacked."""
        target_class = self.target_classes[name]
        if name not in self.module_schemes:
            return target_class.from_weight(weight, bias)
        return get_scheme(self.module_schemes[name]).convert(weight, bias, self._calibration.get(name))

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
        patterns = {}
        for pattern, scheme in config.module_schemes.items():
            for name in linear_modules.resolve_module_names([pattern], linears, "Int8Config.module_schemes"):
                patterns[name] = scheme
        self.module_schemes = {name: patterns.get(name, config.scheme) for name in linears if name not in fallback_dtypes}
        self.target_classes = {
            name: get_scheme(self.module_schemes[name]).module_class if name not in fallback_dtypes
            else _CLASS_BY_FALLBACK_DTYPE[fallback_dtypes[name]]
            for name in linears
            if fallback_dtypes.get(name) != "float32"
        }

    def _prepare_int8_skeleton(self, model, linears, checkpoint_files):
        manifest = self.quantization_config.manifest
        if manifest is None:
            raise CheckpointError(
                f"{MANIFEST_SOURCE} is missing: a pre-quantized optimum-int8 checkpoint must list its int8 modules."
            )
        to_model_name = checkpoint_to_model_names(model, linears, [*manifest.int8_modules, *manifest.fallback_modules])
        int8_modules = {name: to_model_name[name] for name in manifest.int8_modules if name in to_model_name}
        fallback_modules = {to_model_name[n]: d for n, d in manifest.fallback_modules.items() if n in to_model_name}
        linear_modules.check_module_names(int8_modules.values(), linears, f"{MANIFEST_SOURCE}.int8_modules")
        linear_modules.check_module_names(fallback_modules, linears, f"{MANIFEST_SOURCE}.fallback_modules")
        smoothed = manifest.calibration is not None and manifest.calibration.smoothquant_alpha is not None
        requantized = set(manifest.output_qparams_modules)
        skeletons = {}
        with torch.device("meta"):
            for checkpoint_name in manifest.int8_modules:
                if checkpoint_name in to_model_name:
                    name = to_model_name[checkpoint_name]
                    scheme = get_scheme(manifest.scheme_of(checkpoint_name, self.quantization_config.scheme))
                    out_features, in_features = out_in(linears[name])
                    skeletons[checkpoint_name] = (name, scheme.skeleton(
                        in_features, out_features, linears[name].bias is not None, smoothed and scheme.smoothing,
                        requantized=checkpoint_name in requantized,
                    ))
            for checkpoint_name, dtype in manifest.fallback_modules.items():
                if checkpoint_name in to_model_name and dtype in _CLASS_BY_FALLBACK_DTYPE:
                    name = to_model_name[checkpoint_name]
                    out_features, in_features = out_in(linears[name])
                    cls = _CLASS_BY_FALLBACK_DTYPE[dtype]
                    skeletons[checkpoint_name] = (name, cls(in_features, out_features, bias=linears[name].bias is not None))
        layouts = {checkpoint_name: (module.precision, module.layout()) for checkpoint_name, (_, module) in skeletons.items()}
        if checkpoint_files:
            listed = {
                "weight_int8": ("int8", set(manifest.int8_modules)),
                BFloat16Linear.marker_tensor: (BFloat16Linear.precision, {
                    name for name, dtype in manifest.fallback_modules.items() if dtype == "bfloat16"
                }),
            }
            headers = read_tensor_headers(checkpoint_files)
            validate_module_tensors(headers, layouts, listed, MANIFEST_SOURCE)
            module_types = {name: type(module).__name__ for name, module in model.named_modules()}
            prefix = f"{model.base_model_prefix}." if model.base_model_prefix else None
            shapes = {name: tensor.shape for name, tensor in model.state_dict().items()}
            converted = {name: set(layout) for name, (_, layout) in layouts.items()}
            validate_float_tensors(headers, shapes, module_types, converted, prefix, MANIFEST_SOURCE)
            self._tensor_files = tensor_files(headers, module_types, prefix)
        for name, module in skeletons.values():
            model.set_submodule(name, module)
        self.module_schemes = {
            to_model_name[n]: manifest.scheme_of(n, self.quantization_config.scheme) for n in manifest.int8_modules
            if n in to_model_name
        }
        targets = {checkpoint_name: (name, type(module)) for checkpoint_name, (name, module) in skeletons.items()}
        self.target_classes = dict(targets.values())
        linear_modules.untie_modules(model, self.target_classes)
        # In this model's names, so that a re-save writes a manifest that matches its tensors.
        self.quantization_config.manifest = dataclasses.replace(
            manifest, int8_modules=list(int8_modules.values()), fallback_modules=fallback_modules,
            module_schemes={to_model_name[n]: s for n, s in manifest.module_schemes.items() if n in to_model_name},
            output_qparams_modules=[to_model_name[n] for n in manifest.output_qparams_modules if n in to_model_name],
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
            check_nothing_missing(model, self._checkpoint_files)
        return super().postprocess_model(model, **kwargs)

    def _process_model_after_weight_loading(self, model, **kwargs):
        config = self.quantization_config
        if self.pre_quantized:
            self._check_and_pack_loaded_modules(model)
        else:
            self._convert_remaining(model)
        if get_scheme(config.scheme).module_class is not None:  # a scheme with its own hooks sets its own arithmetic
            kernel = runtime.loadable_kernel(config.kernel) if self.pre_quantized else config.kernel
            settings = runtime.configure(model, kernel, config.reduce_range, config.compute_dtype)
            if not self.pre_quantized:
                config.manifest = FallbackManifest(
                    int8_modules=list(self.module_schemes),
                    fallback_modules=dict(self._fallback_modules),
                    kernel=runtime.describe(model) or settings.kernel.describe(),
                    compute_dtype=settings.compute_dtype,
                    module_schemes={n: s for n, s in self.module_schemes.items() if s != config.scheme},
                    calibration=self._calibration_record,
                )
        if self.pre_quantized:
            align_float_linears(model)
        if self.is_compileable:
            generation.configure_fast_decode(model)
        self._releaser = None  # its libc handle serves the load only, and copy.deepcopy of the model cannot copy it
        model.save_pretrained = types.MethodType(atomic_save_pretrained, model)
        model.push_to_hub = types.MethodType(push_to_hub, model)
        return model

    def _check_and_pack_loaded_modules(self, model):
        releaser = self.file_page_releaser()
        manifest = self.quantization_config.manifest
        legacy_codes = manifest is not None and LEGACY_ORIGIN in manifest.created_with
        for name in tqdm(self.target_classes, desc="Packing int8 and bf16 weights", unit="module", leave=False):
            module = model.get_submodule(name)
            layout = module.layout()
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
                check_finite(name, module.weight, module.bias)
                weight = module.weight.t() if isinstance(module, Conv1D) else module.weight
                converted = self.convert_module(name, weight, module.bias)
                converted.pack()
                model.set_submodule(name, converted)
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
    def is_compileable(self) -> bool:
        """Whether transformers may compile the model's decode step: every int8 module's scheme traces whole, and
        no Linear stayed float (the float fallbacks' prepacked oneDNN weights do not lower in inductor)."""
        manifest = self.quantization_config.manifest
        if not self.module_schemes or manifest is None or manifest.fallback_modules:
            return False
        return all(get_scheme(scheme).compiles for scheme in set(self.module_schemes.values()))

    @property
    def is_trainable(self):
        return False


def check_float_model(model, caller: str) -> None:
    """Refuse, naming what to do, a model ``caller`` cannot quantize: not a transformers model, already
    quantized, without weights (meta device) or not on the CPU."""
    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"{caller} expects a transformers PreTrainedModel, got {type(model).__name__}")
    if getattr(model, "is_quantized", False):
        raise ValueError(
            f"{type(model).__name__} is already quantized (quant_method={getattr(model, 'quantization_method', None)!r}); "
            "quantize the fp32 model instead."
        )
    empty = [name for name, tensor in itertools.chain(model.named_parameters(), model.named_buffers()) if tensor.is_meta]
    if empty:
        raise ValueError(
            f"{type(model).__name__} has no weights to quantize: {len(empty)} tensor(s) are on the meta device "
            f"(first: {empty[0]}), as in a model built under torch.device('meta') or init_empty_weights. Load the "
            f"weights first ({type(model).__name__}.from_pretrained(path)), or quantize while loading: "
            f"{type(model).__name__}.from_pretrained(path, quantization_config=Int8Config())."
        )
    devices = {parameter.device.type for parameter in model.parameters()}
    if devices - {"cpu"}:
        raise ValueError(f"{caller} runs on CPU; the model has parameters on {sorted(devices)}. Call model.cpu() first.")


def quantize_model(model: PreTrainedModel, config: Int8Config | None = None, calibration_data=None) -> PreTrainedModel:
    """Quantize a loaded fp32 transformers model in place (and return it) with ``config``'s scheme (default
    ``Int8Config()``).

    The model keeps its class; ``config.quantization_config`` gets the manifest of what is int8 and what
    stayed fp32, so ``save_pretrained`` writes a checkpoint that ``from_pretrained`` restores.
    ``calibration_data``, an iterable of model input dicts (a tokenizer's outputs), sets static activation
    scales (``"int8_static"``, ``"ibert"``) and SmoothQuant factors (``smoothquant_alpha``); docs/schemes.md.
    """
    check_float_model(model, "quantize_model")
    config = copy.deepcopy(config) if config is not None else Int8Config()
    config.manifest = None
    if calibration_data is not None and not config.takes_calibration_data:
        smoothing = " without smoothquant_alpha" if get_scheme(config.scheme).smoothing else ""
        raise ValueError(
            f"calibration_data sets static activation scales or SmoothQuant factors; the {config.scheme!r} scheme"
            f"{smoothing} quantizes activations per call (or not at all) and takes none."
        )
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
