"""Our scheme in neural-compressor's registries, and what a trial config means."""

import pytest
import torch
from neural_compressor.common.base_config import config_registry
from neural_compressor.common.base_tuning import ConfigLoader
from neural_compressor.torch.quantization import quantize
from neural_compressor.torch.utils.utility import algos_mapping

from conftest import TINY_ARCHS, run
from optimum_int8 import BFloat16Linear, Int8Config, Int8DynamicLinear, quantize_model
from optimum_int8.tuning.scheme import ALGO_NAME, FRAMEWORK_NAME, Int8DynamicFallbackConfig, int8_dynamic_entry


def test_config_and_algorithm_are_registered():
    assert config_registry.get_cls_configs()[FRAMEWORK_NAME][ALGO_NAME] is Int8DynamicFallbackConfig
    assert algos_mapping[ALGO_NAME] is int8_dynamic_entry


def test_neural_compressor_quantize_applies_the_per_module_fallbacks(bart):
    model = bart.build()
    fallbacks = {"model.decoder.layers.0.fc2": "float32", "model.encoder.layers.1.fc1": "bfloat16"}
    config = Int8DynamicFallbackConfig.with_fallbacks(fallbacks)
    qmodel = quantize(model, config)
    assert qmodel.config.quantization_config.manifest.fallback_modules == fallbacks
    assert type(qmodel.get_submodule("model.decoder.layers.0.fc2")) is torch.nn.Linear
    assert isinstance(qmodel.get_submodule("model.encoder.layers.1.fc1"), BFloat16Linear)
    assert isinstance(qmodel.get_submodule("model.decoder.layers.0.fc1"), Int8DynamicLinear)
    # Same model as quantize_model with the equivalent Int8Config.
    expected = quantize_model(bart.build(), Int8Config(modules_in_fp32=["model.decoder.layers.0.fc2"],
                                                       modules_in_bf16=["model.encoder.layers.1.fc1"]))
    torch.testing.assert_close(run(qmodel, bart.inputs()), run(expected, bart.inputs()), rtol=0, atol=0)


def test_fallback_names_match_exactly_not_as_regex_prefixes():
    model = TINY_ARCHS["bert"].build()
    # "bert.encoder.layer.1.attention.self.query" must not also catch e.g. "...query_x"; dots are literal.
    config = Int8DynamicFallbackConfig.with_fallbacks({"bert.encoder.layer.1.attention.self.query": "float32"})
    qmodel = quantize(model, config)
    assert qmodel.config.quantization_config.manifest.fallback_modules == {"bert.encoder.layer.1.attention.self.query": "float32"}


def test_trial_configs_differ_only_in_fallbacks_and_load_as_distinct_configs():
    configs = [Int8DynamicFallbackConfig.with_fallbacks(dict.fromkeys(names, "float32")) for names in ([], ["a"], ["a", "b"])]
    assert {config.dtype for config in configs} == {"int8"}
    assert [sorted(config.local_config) for config in configs] == [[], ["a$"], ["a$", "b$"]]
    loaded = list(ConfigLoader(configs))
    assert len(loaded) == 3


def test_only_quantize_mode_and_known_dtypes():
    with pytest.raises(ValueError, match="dtype"):
        Int8DynamicFallbackConfig(dtype="int4")
    with pytest.raises(ValueError, match="no .*prepare"):
        int8_dynamic_entry(TINY_ARCHS["bert"].build(), {}, mode="prepare")
