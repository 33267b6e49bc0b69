"""The generated model card: written on save, parsed back with huggingface_hub, every field checked."""

import dataclasses
import re

import pytest
import torch
from conftest import LEGACY_FIXTURES, TINY_ARCHS, run
from huggingface_hub import ModelCard
from transformers import AutoModelForSeq2SeqLM, BertConfig, BertForPreTraining

from optimum_int8 import Int8Config, TuningRecord, quantize_model
from optimum_int8.checkpoint import read_tensor_headers
from optimum_int8.configuration import DEFAULT_SCHEME
from optimum_int8.modelcard import GENERATED_MARKER, weight_sizes, write_model_card
from optimum_int8.schemes import get_scheme

BART_FIXTURE = LEGACY_FIXTURES / "bart_seq2seq_dynamic"
FALLBACKS = ["model.decoder.layers.0.fc2", "lm_head"]


def quantized_bart(**config):
    model = AutoModelForSeq2SeqLM.from_pretrained(BART_FIXTURE / "fp32")
    return quantize_model(model, Int8Config(**config))


def record(**fields) -> TuningRecord:
    return TuningRecord(**{"metric": "rougeLsum", "fp32_value": 41.53, "int8_value": 41.22, "tolerance": 0.01, **fields})


def tensor_bytes(directory) -> int:
    sizes = {"I8": 1, "BF16": 2, "F32": 4, "I64": 8}
    return sum(sizes[dtype] * torch.Size(shape).numel()
               for _, dtype, shape in read_tensor_headers(sorted(directory.glob("*.safetensors"))).values())


def test_card_fields_parse_back_with_huggingface_hub(tmp_path):
    qmodel = quantized_bart(modules_in_fp32=FALLBACKS)
    qmodel.config.quantization_config.manifest.tuning = record(trials=4, evaluations=6, stop_reason="search complete",
                                                               library_versions={"torch": "2.13.0"})
    qmodel.save_pretrained(tmp_path / "bart-int8")
    write_model_card(qmodel, tmp_path / "bart-int8", repo_id="org/bart-int8", license="apache-2.0",
                     datasets=["cnn_dailymail"], base_model="facebook/bart-large-cnn", task="summarization")

    card = ModelCard.load(tmp_path / "bart-int8" / "README.md")
    data = card.data
    assert data.license == "apache-2.0"
    assert data.tags[:4] == ["optimum-int8", "int8", "dynamic-quantization", "quantized"]
    assert data.datasets == ["cnn_dailymail"] and data.metrics == ["rougeLsum"]
    assert data.base_model == "facebook/bart-large-cnn" and data.to_dict()["base_model_relation"] == "quantized"
    assert data.library_name == "transformers" and data.pipeline_tag == "summarization"
    assert data.model_name == "bart-int8"
    (result,) = data.eval_results
    assert (result.task_type, result.dataset_type, result.metric_type, result.metric_value) == (
        "summarization", "cnn_dailymail", "rougeLsum", 41.22)

    text = card.text
    assert get_scheme(DEFAULT_SCHEME).card_sentence in text and "Quantized from `facebook/bart-large-cnn`" in text
    assert "2/33 Linear modules kept in fp32:" in text
    assert all(f"- `{name}`" in text for name in FALLBACKS)
    assert "| rougeLsum on cnn_dailymail | 41.53 | 41.22 |" in text
    sizes = weight_sizes(qmodel, tmp_path / "bart-int8")
    assert f"| weights size | {sizes.fp32_bytes / 1e3:.1f} kB | {sizes.int8_bytes / 1e3:.1f} kB" in text
    assert "int8 loses 0.75%: met" in text and "4 int8 trial(s) (6 full evaluations) and stopped: search complete" in text
    assert 'INCModelForSeq2SeqLM.from_pretrained("org/bart-int8")' in text


def test_missed_tolerance_and_lower_is_better_metrics_are_reported(tmp_path):
    qmodel = quantized_bart()
    qmodel.config.quantization_config.manifest.tuning = record(
        metric="perplexity", fp32_value=10.0, int8_value=10.5, tolerance=0.2, tolerance_mode="absolute",
        higher_is_better=False, tolerance_met=False)
    qmodel.save_pretrained(tmp_path / "m")
    text = ModelCard.load(tmp_path / "m" / "README.md").text
    assert "Tolerance: 0.2 absolute loss of perplexity (lower is better); int8 loses 0.5: **not met**." in text


def test_fields_the_tuner_adds_to_its_record_are_used(tmp_path):
    tuner_record = dataclasses.make_dataclass(
        "TunerRecord", [("task", str, None), ("dataset", str, None), ("dataset_split", str, None)], bases=(TuningRecord,))
    qmodel = quantized_bart()
    qmodel.config.quantization_config.manifest.tuning = tuner_record(
        metric="rougeLsum", fp32_value=41.53, int8_value=41.5, tolerance=0.01, task="summarization",
        dataset="cnn_dailymail", dataset_split="validation")
    qmodel.save_pretrained(tmp_path / "m")
    (result,) = ModelCard.load(tmp_path / "m" / "README.md").data.eval_results
    assert (result.task_type, result.dataset_name, result.dataset_split) == ("summarization", "cnn_dailymail", "validation")


def test_card_without_a_tuning_record_has_sizes_but_no_results(tmp_path):
    qmodel = quantized_bart(modules_in_fp32=["lm_head"], modules_in_bf16=["model.decoder.layers.0.fc2"])
    qmodel.save_pretrained(tmp_path / "m")
    card = ModelCard.load(tmp_path / "m" / "README.md")
    assert card.data.eval_results is None and card.data.metrics is None
    assert card.data.pipeline_tag == "text2text-generation"
    assert "1/33 Linear modules kept in fp32:\n\n- `lm_head`" in card.text
    assert "1/33 Linear modules kept in bf16:\n\n- `model.decoder.layers.0.fc2`" in card.text
    assert "No accuracy evaluation is recorded" in card.text and "| FP32 | INT8 |" not in card.text


@pytest.mark.parametrize("name", sorted(TINY_ARCHS))
def test_weight_sizes_are_the_real_checkpoint_sizes(tmp_path, name):
    arch = TINY_ARCHS[name]
    arch.build().save_pretrained(tmp_path / "fp32")
    qmodel = quantize_model(arch.build(), Int8Config())
    qmodel.save_pretrained(tmp_path / "int8")
    sizes = weight_sizes(qmodel, tmp_path / "int8")
    assert sizes.fp32_bytes == tensor_bytes(tmp_path / "fp32")
    assert sizes.int8_bytes == tensor_bytes(tmp_path / "int8") < sizes.fp32_bytes


def run_snippet(card_path) -> dict:
    namespace = {}
    exec(re.search(r"```python\n(.*?)```", card_path.read_text(), re.S).group(1), namespace)
    return namespace


def test_load_snippet_loads_the_model(tmp_path):
    qmodel = quantized_bart(modules_in_fp32=FALLBACKS)
    qmodel.save_pretrained(tmp_path / "m")
    write_model_card(qmodel, tmp_path / "m", repo_id=str(tmp_path / "m"))
    inputs = TINY_ARCHS["bart"].inputs()
    assert torch.equal(run(run_snippet(tmp_path / "m" / "README.md")["model"], inputs), run(qmodel, inputs))


def test_load_snippet_for_a_class_no_loader_returns_uses_the_transformers_class(tmp_path):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64)
    qmodel = quantize_model(BertForPreTraining(config).eval())
    qmodel.save_pretrained(tmp_path / "m")
    write_model_card(qmodel, tmp_path / "m", repo_id=str(tmp_path / "m"))
    loaded = run_snippet(tmp_path / "m" / "README.md")["model"]
    assert type(loaded) is BertForPreTraining and loaded.config.quantization_config.manifest is not None


def test_save_rewrites_its_own_card_but_keeps_a_handwritten_one(tmp_path):
    directory = tmp_path / "m"
    quantized_bart().save_pretrained(directory)
    assert GENERATED_MARKER in (directory / "README.md").read_text()
    quantized_bart(modules_in_fp32=["lm_head"]).save_pretrained(directory)
    assert "1/33 Linear modules kept in fp32" in (directory / "README.md").read_text()

    (directory / "README.md").write_text("# My notes on this model\n")
    quantized_bart().save_pretrained(directory)
    assert (directory / "README.md").read_text() == "# My notes on this model\n"
    assert write_model_card(quantized_bart(), directory) is None


def test_card_needs_a_quantized_model_and_its_saved_weights(tmp_path):
    fp32 = AutoModelForSeq2SeqLM.from_pretrained(BART_FIXTURE / "fp32")
    with pytest.raises(ValueError, match="not an optimum-int8 quantized model"):
        write_model_card(fp32, tmp_path)
    with pytest.raises(FileNotFoundError, match="has no .safetensors weights; save the model there"):
        write_model_card(quantized_bart(), tmp_path)
