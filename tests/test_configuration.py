import json

import pytest

from optimum_int8 import FallbackManifest, Int8Config, TuningRecord
from optimum_int8.configuration import DEFAULT_SCHEME, FORMAT_VERSION, ConfigError


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
    assert data["format_version"] == FORMAT_VERSION
    assert data["scheme"] == DEFAULT_SCHEME
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
    assert config.format_version == FORMAT_VERSION and config.manifest == _manifest()


def test_manifest_records_library_versions():
    assert set(FallbackManifest(int8_modules=[]).created_with) == {"optimum-int8", "torch", "transformers"}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(colour="red"), r"quantization_config has unknown key\(s\) \['colour'\]"),
        (lambda d: d["manifest"].update(extra=1), r"quantization_config.manifest has unknown key\(s\) \['extra'\]"),
        (lambda d: d["manifest"]["tuning"].pop("metric"), r"quantization_config.manifest.tuning is missing .*'metric'"),
        (lambda d: d["manifest"]["tuning"].update(tolerance_mode="percent"), "tolerance_mode must be one of"),
        (lambda d: d.update(format_version=5), r"format_version is 5; this optimum-int8 reads versions \[1, 2, 3, 4\]"),
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


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["manifest"].update(int8_modules={"lm_head": 1}), r"manifest.int8_modules must be a list of strings, got \{'lm_head': 1\}"),
        (lambda d: d["manifest"].update(fallback_modules=["lm_head"]), r"manifest.fallback_modules must be an object of strings"),
        (lambda d: d["manifest"]["created_with"].update(torch=True), r"manifest.created_with must be an object of strings, got"),
        (lambda d: d["manifest"].update(tuning=[1, 2]), r"manifest.tuning must be a JSON object, got list"),
        (lambda d: d["manifest"]["tuning"].update(fp32_value="high"), r"tuning.fp32_value must be a number, got 'high'"),
        (lambda d: d["manifest"]["tuning"].update(int8_value=True), r"tuning.int8_value must be a number, got True"),
        (lambda d: d["manifest"]["tuning"].update(trials=-1), r"tuning.trials must be a non-negative integer, got -1"),
        (lambda d: d["manifest"]["tuning"].update(higher_is_better="yes"), r"tuning.higher_is_better must be true or false"),
        (lambda d: d["manifest"]["tuning"].update(library_versions={"torch": 2.1}), r"tuning.library_versions must be an object of strings"),
        (lambda d: d["manifest"]["tuning"].update(tolerance_met="no"), r"tuning.tolerance_met must be true or false or null"),
        (lambda d: d["manifest"]["tuning"].update(trial_results=[{"value": [[[1]]]}]), r"tuning.trial_results must be a list of objects"),
        (lambda d: d["manifest"]["tuning"].update(tolerance=-0.5), r"tuning.tolerance must be a finite number >= 0, got -0.5"),
        (lambda d: d["manifest"].update(activation_scales={"encoder": 3}), r"manifest.activation_scales must be an object of objects"),
    ],
    ids=["int8-object", "fallbacks-list", "version-true", "tuning-list", "value-string", "value-bool", "trials-negative",
         "direction-string", "versions-numbers", "met-string", "deep-trial", "tolerance-negative", "scales-number"],
)
def test_every_manifest_field_is_type_checked(mutate, message):
    data = Int8Config(manifest=_manifest()).to_dict()
    data["manifest"]["tuning"] = {"metric": "accuracy", "fp32_value": 0.9, "int8_value": 0.89, "tolerance": 0.01}
    mutate(data)
    with pytest.raises(ConfigError, match=message):
        Int8Config.from_dict(data)


def test_error_messages_stay_short_whatever_the_config_holds():
    data = Int8Config(manifest=_manifest()).to_dict()
    data["manifest"]["x" * 100_000] = 1
    data["manifest"]["created_with"]["torch"] = ["y" * 100_000]
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['xxx.*\(str, 100002 characters\)\]") as unknown:
        Int8Config.from_dict(data)
    del data["manifest"]["x" * 100_000]
    with pytest.raises(ConfigError, match=r"created_with must be an object of strings") as bad_type:
        Int8Config.from_dict(data)
    assert len(str(unknown.value)) < 400 and len(str(bad_type.value)) < 400
