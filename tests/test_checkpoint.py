import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSeq2SeqLM

from conftest import LEGACY_FIXTURES, run
from optimum_int8 import (
    INCModelForSeq2SeqLM,
    INCModelForSequenceClassification,
    Int8Config,
    convert_legacy_checkpoint,
    quantize_model,
)
from optimum_int8.checkpoint import CheckpointError
from optimum_int8.configuration import DEFAULT_SCHEME, ConfigError


@pytest.fixture
def int8_dir(tmp_path, bart, bart_fp32_dir) -> Path:
    qmodel = quantize_model(AutoModelForSeq2SeqLM.from_pretrained(bart_fp32_dir), Int8Config(modules_in_fp32=["lm_head"]))
    qmodel.save_pretrained(tmp_path / "int8")
    return tmp_path / "int8"


def _edit_config(directory: Path, edit) -> None:
    config = json.loads((directory / "config.json").read_text())
    edit(config["quantization_config"])
    (directory / "config.json").write_text(json.dumps(config))


def _edit_tensors(directory: Path, edit) -> None:
    tensors = load_file(directory / "model.safetensors")
    edit(tensors)
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})


def test_format_is_safetensors_with_manifest_in_config(int8_dir):
    assert sorted(p.name for p in int8_dir.iterdir()) == ["README.md", "config.json", "generation_config.json", "model.safetensors"]
    config = json.loads((int8_dir / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "optimum_int8" and config["scheme"] == DEFAULT_SCHEME
    assert config["manifest"]["fallback_modules"] == {"lm_head": "float32"}
    with safe_open(int8_dir / "model.safetensors", framework="pt") as handle:
        keys = set(handle.keys())
        for name in config["manifest"]["int8_modules"]:
            assert handle.get_slice(f"{name}.weight_int8").get_dtype() == "I8"
            assert handle.get_slice(f"{name}.weight_scale").get_dtype() == "F32"
            assert f"{name}.weight" not in keys
    assert "lm_head.weight" not in keys  # fp32 lm_head stays tied to the shared embedding


def test_bf16_fallbacks_are_stored_as_bf16_tensors(tmp_path, bart_fp32_dir):
    config = Int8Config(modules_in_fp32=["lm_head"], modules_in_bf16=["model.decoder.layers.*.fc2"])
    quantize_model(AutoModelForSeq2SeqLM.from_pretrained(bart_fp32_dir), config).save_pretrained(tmp_path / "int8")
    manifest = json.loads((tmp_path / "int8" / "config.json").read_text())["quantization_config"]["manifest"]
    assert manifest["fallback_modules"] == {
        "model.decoder.layers.0.fc2": "bfloat16", "model.decoder.layers.1.fc2": "bfloat16", "lm_head": "float32"}
    with safe_open(tmp_path / "int8" / "model.safetensors", framework="pt") as handle:
        keys = set(handle.keys())
        for name in ("model.decoder.layers.0.fc2", "model.decoder.layers.1.fc2"):
            assert handle.get_slice(f"{name}.weight_bf16").get_dtype() == "BF16"
            assert handle.get_slice(f"{name}.bias").get_dtype() == "BF16"
            assert f"{name}.weight" not in keys


def test_bf16_tensor_with_the_wrong_dtype(tmp_path, bart_fp32_dir):
    config = Int8Config(modules_in_bf16=["model.decoder.layers.0.fc2"])
    quantize_model(AutoModelForSeq2SeqLM.from_pretrained(bart_fp32_dir), config).save_pretrained(tmp_path / "int8")
    key = "model.decoder.layers.0.fc2.weight_bf16"
    _edit_tensors(tmp_path / "int8", lambda t: t.update({key: t[key].float()}))
    with pytest.raises(CheckpointError, match=rf"tensor '{key}' is F32 \[32, 64\].*require BF16 \[32, 64\]"):
        INCModelForSeq2SeqLM.from_pretrained(tmp_path / "int8")


def test_bf16_tensor_not_listed_in_the_manifest(tmp_path, bart_fp32_dir):
    config = Int8Config(modules_in_bf16=["model.decoder.layers.0.fc2"])
    quantize_model(AutoModelForSeq2SeqLM.from_pretrained(bart_fp32_dir), config).save_pretrained(tmp_path / "int8")
    _edit_config(tmp_path / "int8", lambda q: q["manifest"]["fallback_modules"].update({"model.decoder.layers.0.fc2": "float32"}))
    with pytest.raises(CheckpointError, match=r"'model.decoder.layers.0.fc2.weight_bf16' is bfloat16, but the manifest"):
        INCModelForSeq2SeqLM.from_pretrained(tmp_path / "int8")


def test_large_models_are_sharded_like_transformers(tmp_path, bart, int8_dir):
    model = INCModelForSeq2SeqLM.from_pretrained(int8_dir)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    files = sorted(p.name for p in (tmp_path / "sharded").iterdir())
    assert "model.safetensors.index.json" in files
    assert len([f for f in files if f.startswith("model-")]) > 1
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pkl"))]
    inputs = bart.inputs()
    assert torch.equal(run(INCModelForSeq2SeqLM.from_pretrained(tmp_path / "sharded"), inputs), run(model, inputs))


def test_corrupt_safetensors_is_named(int8_dir):
    (int8_dir / "model.safetensors").write_bytes(b"\x13\x00\x00\x00\x00\x00\x00\x00not a safetensors header")
    with pytest.raises(CheckpointError, match=r"model.safetensors is not a readable safetensors file"):
        INCModelForSeq2SeqLM.from_pretrained(int8_dir)


def test_truncated_safetensors_is_named(int8_dir):
    data = (int8_dir / "model.safetensors").read_bytes()
    (int8_dir / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model.safetensors is not a readable safetensors file.*truncated"):
        INCModelForSeq2SeqLM.from_pretrained(int8_dir)


def test_manifest_naming_a_missing_module(int8_dir):
    _edit_config(int8_dir, lambda q: q["manifest"]["int8_modules"].append("model.decoder.layers.7.fc1"))
    with pytest.raises(ValueError, match=r"manifest.int8_modules names 'model.decoder.layers.7.fc1'"):
        INCModelForSeq2SeqLM.from_pretrained(int8_dir)


def test_missing_manifest(int8_dir):
    _edit_config(int8_dir, lambda q: q.update(manifest=None))
    with pytest.raises(CheckpointError, match="quantization_config.manifest is missing"):
        INCModelForSeq2SeqLM.from_pretrained(int8_dir)


def test_shape_mismatch_between_manifest_and_weights(int8_dir):
    key = "model.encoder.layers.0.fc1.weight_int8"
    _edit_tensors(int8_dir, lambda t: t.update({key: t[key][:, :16].contiguous()}))
    with pytest.raises(CheckpointError, match=rf"model.safetensors: tensor '{key}' is I8 \[64, 16\].*require I8 \[64, 32\]"):
        INCModelForSeq2SeqLM.from_pretrained(int8_dir)


def test_dtype_mismatch_between_manifest_and_weights(int8_dir):
    key = "model.encoder.layers.1.fc2.weight_scale"
    _edit_tensors(int8_dir, lambda t: t.update({key: t[key].half()}))
    with pytest.raises(CheckpointError, match=rf"tensor '{key}' is F16 \[32\].*require F32 \[32\]"):
        INCModelForSeq2SeqLM.from_pretrained(int8_dir)


def test_int8_tensor_missing_from_the_files(int8_dir):
    key = "model.decoder.layers.0.fc1.weight_scale"
    _edit_tensors(int8_dir, lambda t: t.pop(key))
    with pytest.raises(CheckpointError, match=rf"lists 'model.decoder.layers.0.fc1' as int8, but no checkpoint file has tensor '{key}'"):
        INCModelForSeq2SeqLM.from_pretrained(int8_dir)


def test_int8_tensor_not_listed_in_the_manifest(int8_dir):
    _edit_config(int8_dir, lambda q: q["manifest"]["int8_modules"].remove("model.decoder.layers.1.fc2"))
    with pytest.raises(CheckpointError, match=r"'model.decoder.layers.1.fc2.weight_int8' is int8, but the manifest"):
        INCModelForSeq2SeqLM.from_pretrained(int8_dir)


def test_pickled_weights_are_refused(int8_dir):
    torch.save(load_file(int8_dir / "model.safetensors"), int8_dir / "pytorch_model.bin")
    (int8_dir / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"pytorch_model.bin: optimum-int8 checkpoints are safetensors only"):
        INCModelForSeq2SeqLM.from_pretrained(int8_dir)


@pytest.mark.parametrize("key", [
    "model.encoder.layers.0.self_attn_layer_norm.weight",  # a norm
    "model.decoder.layers.1.final_layer_norm.bias",
    "model.shared.weight",  # the embedding every tied copy comes from
    "model.encoder.embed_positions.weight",
])
def test_a_missing_float_tensor_is_an_error_not_random_values(int8_dir, key):
    _edit_tensors(int8_dir, lambda t: t.pop(key))
    with pytest.raises(CheckpointError, match=rf"model.safetensors lack tensor\(s\) .*'{key}'.*random values"):
        INCModelForSeq2SeqLM.from_pretrained(int8_dir)


def test_a_missing_bias_of_an_fp32_fallback_is_an_error(tmp_path, bart_fp32_dir):
    config = Int8Config(modules_in_fp32=["model.decoder.layers.0.fc2"])
    quantize_model(AutoModelForSeq2SeqLM.from_pretrained(bart_fp32_dir), config).save_pretrained(tmp_path / "int8")
    _edit_tensors(tmp_path / "int8", lambda t: t.pop("model.decoder.layers.0.fc2.bias"))
    with pytest.raises(CheckpointError, match=r"'model.decoder.layers.0.fc2.bias'"):
        INCModelForSeq2SeqLM.from_pretrained(tmp_path / "int8")


def test_a_float_tensor_of_another_shape_is_named(int8_dir):
    key = "model.encoder.layers.1.final_layer_norm.weight"
    _edit_tensors(int8_dir, lambda t: t.update({key: torch.ones(48)}))
    with pytest.raises(CheckpointError, match=rf"tensor '{key}' is \w+ \[48\], but the model config.json describes needs \[32\]"):
        INCModelForSeq2SeqLM.from_pretrained(int8_dir)


def test_a_config_that_does_not_describe_the_weights_is_named(int8_dir):
    config = json.loads((int8_dir / "config.json").read_text())
    config["max_position_embeddings"] = 32
    (int8_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"'model\.(en|de)coder\.embed_positions\.weight' is \w+ \[66, 32\].*needs \[34, 32\]"):
        INCModelForSeq2SeqLM.from_pretrained(int8_dir)


def test_tensors_of_another_scheme_are_named(int8_dir):
    key = "model.encoder.layers.0.fc1.activation_scale"
    _edit_tensors(int8_dir, lambda t: t.update({key: torch.ones(1)}))
    with pytest.raises(CheckpointError, match=rf"tensor '{key}' has no place in the model: 'model.encoder.layers.0.fc1' is "
                                              r"listed .* with tensors \['bias', 'weight_int8', 'weight_scale'\], not 'activation_scale'"):
        INCModelForSeq2SeqLM.from_pretrained(int8_dir)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("model.encoder.layers.0.fc1.weight_scale", float("nan"), r"1 NaN or infinite value\(s\), first at \[3\]"),
    ("model.encoder.layers.0.fc1.weight_scale", 0.0, "scale 0, outside"),
    ("model.encoder.layers.0.fc1.weight_scale", -0.01, "scale -0.01, outside"),
    ("model.encoder.layers.0.fc1.weight_scale", 1e9, "scale 1e\\+09, outside"),
    ("model.encoder.layers.0.fc1.bias", float("inf"), r"1 NaN or infinite"),
    ("model.decoder.layers.1.fc2.weight_int8", -128, r"int8 code -128 \(1 times, first at \[3, 5\]\); the format's symmetric codes are \[-127, 127\]"),
], ids=["nan-scale", "zero-scale", "negative-scale", "absurd-scale", "inf-bias", "code-128"])
def test_values_the_format_forbids_are_named_by_tensor(int8_dir, key, value, message):
    def edit(tensors):
        tensor = tensors[key].clone()
        tensor[(3, 5) if tensor.dim() == 2 else 3] = value
        tensors[key] = tensor

    _edit_tensors(int8_dir, edit)
    with pytest.raises(CheckpointError, match=rf"model.safetensors: tensor '{key}' holds " + message):
        INCModelForSeq2SeqLM.from_pretrained(int8_dir)


def test_a_nan_bf16_fallback_weight_is_named(tmp_path, bart_fp32_dir):
    config = Int8Config(modules_in_bf16=["model.decoder.layers.0.fc2"])
    quantize_model(AutoModelForSeq2SeqLM.from_pretrained(bart_fp32_dir), config).save_pretrained(tmp_path / "int8")
    key = "model.decoder.layers.0.fc2.weight_bf16"
    _edit_tensors(tmp_path / "int8", lambda t: t.update({key: torch.full_like(t[key], float("nan"))}))
    with pytest.raises(CheckpointError, match=rf"tensor '{key}' holds 2048 NaN"):
        INCModelForSeq2SeqLM.from_pretrained(tmp_path / "int8")


def test_a_float_tensor_in_a_module_that_has_none_is_named(int8_dir):
    key = "model.encoder.layers.0.self_attn_layer_norm.running_mean"
    _edit_tensors(int8_dir, lambda t: t.update({key: torch.zeros(32)}))
    with pytest.raises(CheckpointError, match=rf"'{key}' has no place in the model: 'model.encoder.layers.0.self_attn_layer_norm' "
                                              r"\(LayerNorm\) has no 'running_mean'"):
        INCModelForSeq2SeqLM.from_pretrained(int8_dir)


@pytest.mark.parametrize("depth", [200, 200_000], ids=["parsable", "past-the-parser"])
def test_deeply_nested_manifest_is_a_short_error_naming_the_file(int8_dir, depth):
    text = (int8_dir / "config.json").read_text()
    nested = "[" * depth + "]" * depth
    (int8_dir / "config.json").write_text(text.replace('"tuning": null', f'"tuning": {{"metric": "m", "fp32_value": 1, '
                                                                          f'"int8_value": 1, "tolerance": 0, "trial_results": {nested}}}'))
    with pytest.raises(ValueError, match=r"config.json nests JSON deeper|trial_results must be a list of objects") as error:
        INCModelForSeq2SeqLM.from_pretrained(int8_dir)
    assert len(str(error.value)) < 400


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/hostname", "sub/model.safetensors"])
def test_a_shard_index_entry_outside_the_checkpoint_is_refused(tmp_path, int8_dir, shard):
    model = INCModelForSeq2SeqLM.from_pretrained(int8_dir)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    index_file = tmp_path / "sharded" / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    index["weight_map"][next(iter(index["weight_map"]))] = shard
    index_file.write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"is mapped to .*which is not a file name in the checkpoint directory"):
        INCModelForSeq2SeqLM.from_pretrained(tmp_path / "sharded")


@pytest.fixture(scope="module")
def _converted_static(tmp_path_factory) -> Path:
    """The real legacy INC static fixture in our format: int8_static modules with calibrated output qparams."""
    return convert_legacy_checkpoint(LEGACY_FIXTURES / "bert_seqcls_static", tmp_path_factory.mktemp("static") / "int8",
                                     task="text-classification")


@pytest.fixture
def static_dir(_converted_static, tmp_path) -> Path:
    return Path(shutil.copytree(_converted_static, tmp_path / "static"))


STATIC_MODULE = "bert.encoder.layer.0.intermediate.dense"


@pytest.mark.parametrize("suffix", ["output_scale", "output_zero_point"])
def test_output_qparams_in_a_manifest_without_them_are_named(int8_dir, suffix):
    key = f"model.encoder.layers.0.fc1.{suffix}"
    _edit_tensors(int8_dir, lambda t: t.update({key: torch.ones(1, dtype=torch.float32 if suffix == "output_scale" else torch.int32)}))
    with pytest.raises(CheckpointError, match=rf"tensor '{key}' has no place in the model: .* not '{suffix}'"):
        INCModelForSeq2SeqLM.from_pretrained(int8_dir)


def test_output_qparams_of_a_static_module_the_manifest_does_not_list_are_named(static_dir):
    _edit_config(static_dir, lambda q: q["manifest"]["output_qparams_modules"].remove(STATIC_MODULE))
    with pytest.raises(CheckpointError, match=rf"tensor '{STATIC_MODULE}.output_(scale|zero_point)' has no place in the model"):
        INCModelForSequenceClassification.from_pretrained(static_dir)


def test_output_qparams_listed_but_missing_from_the_files_are_named(static_dir):
    _edit_tensors(static_dir, lambda t: t.pop(f"{STATIC_MODULE}.output_scale"))
    with pytest.raises(CheckpointError, match=rf"no checkpoint file has tensor '{STATIC_MODULE}.output_scale'"):
        INCModelForSequenceClassification.from_pretrained(static_dir)


def test_output_qparams_of_a_module_in_another_scheme_are_refused_by_the_config(static_dir):
    _edit_config(static_dir, lambda q: q["manifest"].setdefault("module_schemes", {}).update({STATIC_MODULE: "int8_dynamic"}))
    with pytest.raises(ConfigError, match=rf"output_qparams_modules names '{STATIC_MODULE}', whose scheme is 'int8_dynamic'"):
        INCModelForSequenceClassification.from_pretrained(static_dir)


@pytest.mark.parametrize(("suffix", "value", "message"), [
    ("output_scale", float("nan"), r"1 NaN or infinite value\(s\), first at \[0\]"),
    ("output_scale", 0.0, "scale 0, outside"),
    ("output_scale", -0.01, "scale -0.01, outside"),
    ("output_scale", float("inf"), r"1 NaN or infinite value\(s\)"),
    ("output_zero_point", 256, r"zero point 256..256, outside the uint8 range \[0, 255\]"),
    ("output_zero_point", -1, r"zero point -1..-1, outside the uint8 range \[0, 255\]"),
], ids=["nan-scale", "zero-scale", "negative-scale", "inf-scale", "zero-point-256", "negative-zero-point"])
def test_output_qparams_the_format_forbids_are_named_by_tensor(static_dir, suffix, value, message):
    key = f"{STATIC_MODULE}.{suffix}"
    _edit_tensors(static_dir, lambda t: t.update({key: torch.full_like(t[key], value)}))
    with pytest.raises(CheckpointError, match=rf"model.safetensors: tensor '{key}' holds " + message):
        INCModelForSequenceClassification.from_pretrained(static_dir)
