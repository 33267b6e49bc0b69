"""The transformers quantizer hooks of the ibert scheme (``Int8Config(scheme="ibert")``).

``Int8HfQuantizer`` hands configs with this scheme to ``IBertHfQuantizer`` (the scheme registry names it). Quantizing (``quantize_model``
with calibration data, or ``from_pretrained`` of a calibrated I-BERT model) converts the loaded float
model after its weights are in; loading a saved checkpoint installs the empty integer modules before
transformers streams the tensors into them, then derives the integer constants.
"""

import dataclasses

from ..checkpoint import CheckpointError, read_tensor_headers, validate_module_tensors
from ..configuration import FallbackManifest
from ..nn import integer_kernels
from ..nn.integer_layers import IntegerEmbedding, IntegerLayerNorm
from ..quantizer import Int8HfQuantizer
from ..schemes.loading import MANIFEST_SOURCE, check_cpu_device_map, checkpoint_to_model_names
from .architecture import encoder_family
from .calibration import calibrate, ibert_ranges_calibrated, scales_from_ibert
from .conversion import (
    activation_scales,
    convert_to_integer,
    float_linears,
    install_skeleton,
    int8_modules,
    prepare_integer_model,
    relative_scales,
)


class IBertHfQuantizer(Int8HfQuantizer):
    """Integer-only encoder (I-BERT) around transformers' weight loading; the task head stays in float."""

    def __init__(self, quantization_config, calibration_data=None, **kwargs):
        super().__init__(quantization_config, calibration_data=calibration_data, **kwargs)
        self._scales: dict | None = None

    def validate_environment(self, device_map=None, **kwargs):
        integer_kernels.check_available()
        check_cpu_device_map(device_map)

    def _process_model_before_weight_loading(self, model, checkpoint_files=None, **kwargs):
        encoder_family(model)
        if self.pre_quantized:
            self._prepare_skeleton(model, checkpoint_files or [])
        elif self.calibration_data is not None:
            # quantize_model: the float weights are already loaded, so calibrate before anything changes.
            self._scales = calibrate(model, self.calibration_data)
        elif model.config.model_type != "ibert":
            raise ValueError(
                f"the ibert scheme needs static activation scales: load the float {type(model).__name__}, then call "
                "quantize_model(model, Int8Config(scheme='ibert'), calibration_data=...) (docs/ibert.md)."
            )
        return model

    def _prepare_skeleton(self, model, checkpoint_files):
        manifest = self.quantization_config.manifest
        if manifest is None or not manifest.activation_scales:
            raise CheckpointError(
                f"{MANIFEST_SOURCE} has no activation_scales: an ibert-scheme checkpoint must record its static scales."
            )
        install_skeleton(model, relative_scales(model, manifest.activation_scales))
        modules = int8_modules(model)
        to_model_name = checkpoint_to_model_names(model, modules, manifest.int8_modules)
        unknown = sorted(name for name in manifest.int8_modules if to_model_name.get(name) not in modules)
        missing = sorted(set(modules) - set(to_model_name.values()))
        if unknown or missing:
            raise CheckpointError(
                f"{MANIFEST_SOURCE}.int8_modules does not match this {type(model).__name__}: "
                f"not in the model {unknown[:4]}, not in the manifest {missing[:4]}."
            )
        if checkpoint_files:
            layouts = {}
            for checkpoint_name, name in to_model_name.items():
                module = modules[name]
                if isinstance(module, IntegerEmbedding):
                    layout = module.state_dict_layout(module.num_embeddings, module.embedding_dim)
                else:
                    layout = module.state_dict_layout(module.out_features, module.in_features, module.bias is not None)
                layouts[checkpoint_name] = ("int8", layout)
            listed = {"weight_int8": ("int8", set(manifest.int8_modules))}
            validate_module_tensors(read_tensor_headers(checkpoint_files), layouts, listed, MANIFEST_SOURCE)

    def param_needs_quantization(self, model, param_name: str, **kwargs) -> bool:
        return False

    def _process_model_after_weight_loading(self, model, **kwargs):
        if self.pre_quantized:
            _check_loaded(model)
            prepare_integer_model(model)
        else:
            convert_to_integer(model, self._scales_for(model))
        # Binds the atomic save_pretrained (and anything else the int8 quantizer gives loaded models); there
        # are no dynamic int8 modules for it to pack or convert.
        super()._process_model_after_weight_loading(model, **kwargs)
        fields = {
            "int8_modules": list(int8_modules(model)),
            "fallback_modules": dict.fromkeys(float_linears(model), "float32"),
            "activation_scales": activation_scales(model),
        }
        manifest = self.quantization_config.manifest
        if self.pre_quantized and manifest is not None:
            self.quantization_config.manifest = dataclasses.replace(manifest, **fields)
        else:
            self.quantization_config.manifest = FallbackManifest(**fields)
        return model

    def _scales_for(self, model) -> dict:
        if self._scales is not None:
            return self._scales
        if ibert_ranges_calibrated(model):
            return scales_from_ibert(model)
        raise ValueError(
            f"{type(model).__name__}'s activation ranges (QuantAct x_min/x_max) are not calibrated: pass "
            "calibration_data to quantize_model(model, Int8Config(scheme='ibert'), calibration_data=...)."
        )


def _check_loaded(model) -> None:
    stored = {**int8_modules(model), **{n: m for n, m in model.named_modules() if isinstance(m, IntegerLayerNorm)}}
    for name, module in stored.items():
        for tensor_name, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            if tensor.is_meta or not getattr(tensor, "_is_hf_initialized", False):
                raise CheckpointError(
                    f"tensor {name}.{tensor_name} was not loaded from the checkpoint files; "
                    f"the weights do not match {MANIFEST_SOURCE}."
                )
