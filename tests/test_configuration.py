import json

import pytest

from optimum_int8 import FallbackManifest, Int8Config, TuningRecord
from optimum_int8.configuration import ConfigError


def _manifest():
    return FallbackManifest(
        int8_modules=["model.encoder.layers.0.fc1"],
        fallback_modules={"lm_head": "float32"},
        tuning=TuningRecord(metric="rougeLsum", fp32_value=41.53, int8_value=41.22, tolerance=0.01, trials=5,
                            library_versions={"neural-compressor": "3.7"}),
    )


def test_config_round_trips_through_json():
    config = Int8Config(modules_in_fp32=["lm_head"], manifest=_manifest())
    data = json.loads(json.dumps(config.to_dict()))
    assert data["quant_method"] == "optimum_int8"
    assert data["format_version"] == 2
    assert data["scheme"] == "int8_dynamic"
    assert (data["kernel"], data["compute_dtype"], data["reduce_range"]) == ("auto", "auto", None)
    assert data["manifest"]["tuning"]["metric"] == "rougeLsum"
    restored = Int8Config.from_dict(data)
    assert restored.to_dict() == config.to_dict()
    assert restored.manifest.tuning == config.manifest.tuning


def test_version_1_configs_still_read_with_the_default_runtime():
    data = Int8Config(modules_in_fp32=["lm_head"], manifest=_manifest()).to_dict()
    for key in ("kernel", "compute_dtype", "reduce_range"):
        del data[key]
    config = Int8Config.from_dict(data | {"format_version": 1})
    assert (config.kernel, config.compute_dtype, config.reduce_range) == ("auto", "auto", None)
    assert config.format_version == 2 and config.manifest == _manifest()


def test_manifest_records_library_versions():
    assert set(FallbackManifest(int8_modules=[]).created_with) == {"optimum-int8", "torch", "transformers"}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(colour="red"), r"quantization_config has unknown key\(s\) \['colour'\]"),
        (lambda d: d["manifest"].update(extra=1), r"quantization_config.manifest has unknown key\(s\) \['extra'\]"),
        (lambda d: d["manifest"]["tuning"].pop("metric"), r"quantization_config.manifest.tuning is missing .*'metric'"),
        (lambda d: d["manifest"]["tuning"].update(tolerance_mode="percent"), "tolerance_mode must be one of"),
        (lambda d: d.update(format_version=3), r"format_version is 3; this optimum-int8 reads versions \[1, 2\]"),
        (lambda d: d.update(format_version=True), "format_version is True"),
        (lambda d: d.update(kernel="cuda"), r"kernel is 'cuda'; choose one of \['auto', 'fbgemm', 'onednn'\]"),
        (lambda d: d.update(compute_dtype="float16"), "compute_dtype is 'float16'"),
        (lambda d: d.update(reduce_range="yes"), "reduce_range must be true, false or null"),
        (lambda d: d.update(scheme="int4"), "scheme is 'int4'"),
        (lambda d: d["manifest"]["fallback_modules"].update(lm_head="float8"), r"fallback_modules\['lm_head'\] is 'float8'"),
        (lambda d: d["manifest"]["fallback_modules"].update({"model.encoder.layers.0.fc1": "float32"}), "both in int8_modules"),
        (lambda d: d.pop("quant_method"), r"missing required key\(s\) \['quant_method'\]"),
    ],
)
def test_malformed_config_names_the_bad_key(mutate, message):
    data = Int8Config(manifest=_manifest()).to_dict()
    mutate(data)
    with pytest.raises(ConfigError, match=message):
        Int8Config.from_dict(data)


def test_modules_in_fp32_must_be_a_list_of_names():
    with pytest.raises(ConfigError, match="list of module names"):
        Int8Config(modules_in_fp32="lm_head")
