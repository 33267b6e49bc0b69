import json
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import (
    AutoModelForSeq2SeqLM,
    BartModel,
    BertConfig,
    BertForMultipleChoice,
)

from optimum_int8 import (
    INCModel,
    INCModelForMultipleChoice,
    INCModelForSeq2SeqLM,
    Int8Config,
    Int8DynamicLinear,
    convert_legacy_checkpoint,
    quantize_model,
)


BF16_FALLBACK = "model.decoder.layers.1.fc2"


@pytest.fixture
def int8_dir(tmp_path, bart, bart_fp32_dir):
    config = Int8Config(modules_in_bf16=[BF16_FALLBACK])
    quantize_model(AutoModelForSeq2SeqLM.from_pretrained(bart_fp32_dir), config).save_pretrained(tmp_path / "int8")
    return tmp_path / "int8"


def test_base_model_loader_returns_the_plain_base_model(int8_dir, bart):
    model = INCModel.from_pretrained(int8_dir)
    assert type(model) is BartModel
    assert isinstance(model.encoder.layers[0].fc1, Int8DynamicLinear)
    inputs = bart.inputs()
    full = INCModelForSeq2SeqLM.from_pretrained(int8_dir)
    with torch.no_grad():
        assert torch.equal(model(**inputs).last_hidden_state, full.model(**inputs).last_hidden_state)


def test_multiple_choice_loader(tmp_path):
    torch.manual_seed(0)
    BertForMultipleChoice(BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64)).save_pretrained(tmp_path / "fp32")
    model = INCModelForMultipleChoice.from_pretrained(tmp_path / "fp32", quantization_config=Int8Config())
    assert type(model) is BertForMultipleChoice
    assert isinstance(model.classifier, Int8DynamicLinear)
    model.save_pretrained(tmp_path / "int8")
    reloaded = INCModelForMultipleChoice.from_pretrained(tmp_path / "int8")
    input_ids = torch.randint(4, 99, (2, 3, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=input_ids).logits, model(input_ids=input_ids).logits)


def test_fp32_checkpoint_without_config_warns_that_nothing_was_quantized(bart_fp32_dir):
    with pytest.warns(UserWarning, match="not an optimum-int8 checkpoint"):
        model = INCModelForSeq2SeqLM.from_pretrained(bart_fp32_dir)
    assert not getattr(model, "is_quantized", False)


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path}/nope does not exist"):
        INCModelForSeq2SeqLM.from_pretrained(tmp_path / "nope")


def test_file_instead_of_directory(int8_dir):
    with pytest.raises(NotADirectoryError, match="model.safetensors is a file"):
        INCModelForSeq2SeqLM.from_pretrained(int8_dir / "model.safetensors")


def test_directory_without_config(int8_dir):
    (int8_dir / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        INCModelForSeq2SeqLM.from_pretrained(int8_dir)


def test_directory_without_weights(int8_dir):
    (int8_dir / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="has no weights file"):
        INCModelForSeq2SeqLM.from_pretrained(int8_dir)


def test_unknown_quant_method(int8_dir):
    config = json.loads((int8_dir / "config.json").read_text())
    config["quantization_config"]["quant_method"] = "int8_magic"
    (int8_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config.json: quantization_config.quant_method is 'int8_magic'"):
        INCModelForSeq2SeqLM.from_pretrained(int8_dir)


def test_without_the_plugin_every_converted_weight_is_reported_missing(int8_dir):
    """What a user sees when loading our checkpoint with plain transformers and no `import optimum_int8`."""
    script = textwrap.dedent(f"""
        import json, sys
        from transformers import AutoModelForSeq2SeqLM
        model, info = AutoModelForSeq2SeqLM.from_pretrained({str(int8_dir)!r}, output_loading_info=True)
        print(json.dumps({{"missing": sorted(info["missing_keys"]), "unexpected": sorted(info["unexpected_keys"]),
                           "optimum_int8_imported": "optimum_int8" in sys.modules}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    int8_modules = json.loads((int8_dir / "config.json").read_text())["quantization_config"]["manifest"]["int8_modules"]
    assert not report["optimum_int8_imported"]
    assert "optimum_int8" in result.stderr  # transformers names the quant_method it skipped
    # lm_head is int8 too, but transformers ties it back to the shared embedding: that one is not garbage.
    converted = [*int8_modules, BF16_FALLBACK]
    assert report["missing"] == sorted(f"{name}.weight" for name in converted if name != "lm_head")
    assert set(report["unexpected"]) == {f"{n}.{t}" for n in int8_modules for t in ("weight_int8", "weight_scale")} | {
        f"{BF16_FALLBACK}.weight_bf16"}
    assert "MISSING" in result.stderr


def test_base_model_loaded_from_a_task_checkpoint_saves_a_consistent_manifest(int8_dir, tmp_path, bart):
    base = INCModel.from_pretrained(int8_dir)
    manifest = base.config.quantization_config.manifest
    assert "lm_head" not in manifest.int8_modules
    assert all(not name.startswith("model.") for name in manifest.int8_modules)
    base.save_pretrained(tmp_path / "base")
    reloaded = INCModel.from_pretrained(tmp_path / "base")
    inputs = bart.inputs()
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).last_hidden_state, base(**inputs).last_hidden_state)


@pytest.mark.parametrize("revision", ["../../../etc", "/absolute", "main/../../x", "a\\b"])
def test_a_revision_that_is_a_path_is_refused_before_any_lookup(tmp_path, revision):
    with pytest.raises(ValueError, match="is not a branch, tag or commit name"):
        INCModelForSeq2SeqLM.from_pretrained("org/model", revision=revision, cache_dir=tmp_path, local_files_only=True)
    with pytest.raises(ValueError, match="is not a branch, tag or commit name"):
        convert_legacy_checkpoint("org/model", tmp_path / "out", revision=revision)
