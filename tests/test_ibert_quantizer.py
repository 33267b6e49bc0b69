"""The ibert scheme end to end: quantize BERT, RoBERTa and I-BERT through every head, save, reload bit-exact."""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModelForMaskedLM,
    AutoModelForMultipleChoice,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    BertConfig,
    DistilBertConfig,
    IBertConfig,
    RobertaConfig,
)

import optimum_int8
from optimum_int8 import Int8Config, quantize_model
from optimum_int8.checkpoint import CheckpointError
from optimum_int8.configuration import ConfigError
from optimum_int8.ibert import IntegerEmbeddings, IntegerEncoder
from optimum_int8.nn.integer_layers import IntegerLinear

from conftest import VOCAB, run

SIZES = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
             max_position_embeddings=64)
CONFIGS = {
    "bert": lambda: BertConfig(**SIZES),
    "roberta": lambda: RobertaConfig(**SIZES, pad_token_id=1),
    "ibert": lambda: IBertConfig(**SIZES, pad_token_id=1),
    "ibert-quant-mode": lambda: IBertConfig(**SIZES, pad_token_id=1, quant_mode=True),
}
HEADS = {
    "MaskedLM": (AutoModelForMaskedLM, optimum_int8.INCModelForMaskedLM),
    "SequenceClassification": (AutoModelForSequenceClassification, optimum_int8.INCModelForSequenceClassification),
    "MultipleChoice": (AutoModelForMultipleChoice, optimum_int8.INCModelForMultipleChoice),
    "TokenClassification": (AutoModelForTokenClassification, optimum_int8.INCModelForTokenClassification),
    "QuestionAnswering": (AutoModelForQuestionAnswering, optimum_int8.INCModelForQuestionAnswering),
}


def _inputs(head: str, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(4, VOCAB, (3, 12), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, 8:] = 0
    input_ids[0, 8:] = 1
    if head == "MultipleChoice":
        return {"input_ids": input_ids[:, None].repeat(1, 2, 1), "attention_mask": attention_mask[:, None].repeat(1, 2, 1)}
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def _build(arch: str, head: str):
    torch.manual_seed(0)
    return HEADS[head][0].from_config(CONFIGS[arch]()).eval()


def _quantize(model, head: str):
    return quantize_model(model, Int8Config(scheme="ibert"), calibration_data=[_inputs(head, seed) for seed in (10, 11, 12)])


@pytest.mark.parametrize("head", sorted(HEADS))
@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_every_head_quantizes_saves_and_reloads_bit_exact(tmp_path, arch, head):
    model = _build(arch, head)
    inputs = _inputs(head, seed=1)
    quantized = _quantize(copy.deepcopy(model), head)
    base = quantized.base_model
    assert isinstance(base.embeddings, IntegerEmbeddings) and isinstance(base.encoder, IntegerEncoder)
    assert not any(isinstance(m, torch.nn.Linear) for m in base.encoder.modules())
    out = run(quantized, inputs)
    if arch != "ibert-quant-mode":  # an uncalibrated quant_mode=True model is no float reference
        expected = run(model, inputs)
        cosine = torch.nn.functional.cosine_similarity(out.flatten(), expected.flatten(), dim=0)
        assert cosine > 0.98, f"integer-only output drifted from the float model: cosine {cosine:.4f}"

    quantized.save_pretrained(tmp_path)
    reloaded = HEADS[head][1].from_pretrained(tmp_path)
    assert type(reloaded) is type(model)
    assert torch.equal(run(reloaded, inputs), out)
    assert reloaded.config.quantization_config.manifest == quantized.config.quantization_config.manifest


def test_manifest_records_scheme_scales_and_float_head(tmp_path):
    quantized = _quantize(_build("roberta", "SequenceClassification"), "SequenceClassification")
    quantized.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert config["scheme"] == "ibert"
    manifest = config["manifest"]
    assert manifest["fallback_modules"] == {"classifier.dense": "float32", "classifier.out_proj": "float32"}
    assert len(manifest["int8_modules"]) == 3 + 2 * 6
    assert "roberta.embeddings.word_embeddings" in manifest["int8_modules"]
    scales = manifest["activation_scales"]
    assert set(scales["roberta.encoder.layer.1.attention.self"]) == {"query", "key", "value", "exp", "context"}
    assert set(scales["roberta.embeddings"]) == {"sum", "output"}
    tensors = load_file(tmp_path / "model.safetensors")
    assert tensors["roberta.encoder.layer.0.attention.self.query.weight_int8"].dtype == torch.int8
    assert "roberta.encoder.layer.0.attention.self.query.weight" not in tensors
    assert tensors["classifier.dense.weight"].dtype == torch.float32


def test_masked_lm_keeps_a_float_decoder_beside_the_int8_embeddings(tmp_path):
    quantized = _quantize(_build("bert", "MaskedLM"), "MaskedLM")
    quantized.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    assert tensors["cls.predictions.decoder.weight"].dtype == torch.float32
    assert tensors["bert.embeddings.word_embeddings.weight_int8"].dtype == torch.int8


def test_base_model_loads_from_a_task_checkpoint(tmp_path):
    inputs = _inputs("SequenceClassification", seed=1)
    quantized = _quantize(_build("bert", "SequenceClassification"), "SequenceClassification")
    quantized.save_pretrained(tmp_path)
    base = optimum_int8.INCModel.from_pretrained(tmp_path)
    with torch.no_grad():
        hidden = base(**inputs).last_hidden_state
        expected = quantized.bert(**inputs).last_hidden_state
    assert torch.equal(hidden, expected)


def test_padding_leaves_the_real_tokens_bit_identical():
    quantized = _quantize(_build("roberta", "TokenClassification"), "TokenClassification")
    inputs = _inputs("TokenClassification", seed=1)
    with torch.no_grad():
        batched = quantized.roberta(**inputs).last_hidden_state[0, :8]
        alone = quantized.roberta(input_ids=inputs["input_ids"][:1, :8]).last_hidden_state[0]
    # Masked keys get exactly zero probability and the scales are static: integer outputs do not depend on
    # what else is in the batch (the float head may still round differently for other GEMM shapes).
    assert torch.equal(batched, alone)


def test_scheme_and_calibration_are_checked_before_anything_changes():
    with pytest.raises(ConfigError, match="modules_in_fp32"):
        Int8Config(scheme="ibert", modules_in_fp32=["classifier"])
    model = _build("bert", "SequenceClassification")
    with pytest.raises(ValueError, match="calibration_data"):
        quantize_model(model, Int8Config(scheme="ibert"))
    assert not getattr(model, "is_quantized", False)
    assert getattr(model.config, "quantization_config", None) is None
    with pytest.raises(ValueError, match="takes none"):
        quantize_model(model, Int8Config(), calibration_data=[_inputs("SequenceClassification", 0)])
    with pytest.raises(ValueError, match="empty"):
        quantize_model(model, Int8Config(scheme="ibert"), calibration_data=[])
    distilbert = AutoModelForSequenceClassification.from_config(
        DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=1, n_heads=4, hidden_dim=64, max_position_embeddings=64)
    )
    with pytest.raises(ValueError, match="model_type 'distilbert'"):
        quantize_model(distilbert, Int8Config(scheme="ibert"), calibration_data=[_inputs("SequenceClassification", 0)])
    relu = AutoModelForSequenceClassification.from_config(BertConfig(**SIZES, hidden_act="relu"))
    with pytest.raises(ValueError, match="hidden_act"):
        quantize_model(relu, Int8Config(scheme="ibert"), calibration_data=[_inputs("SequenceClassification", 0)])


def test_unsupported_outputs_fail_loudly():
    quantized = _quantize(_build("bert", "SequenceClassification"), "SequenceClassification")
    inputs = _inputs("SequenceClassification", seed=1)
    with pytest.raises(NotImplementedError, match="output_hidden_states"):
        quantized(**inputs, output_hidden_states=True)
    with pytest.raises(ValueError, match="input_ids"):
        quantized(inputs_embeds=torch.zeros(1, 4, 32))


def test_tampered_checkpoints_are_refused(tmp_path):
    _quantize(_build("bert", "SequenceClassification"), "SequenceClassification").save_pretrained(tmp_path)
    config_file, weights_file = tmp_path / "config.json", tmp_path / "model.safetensors"
    original_config, original_weights = config_file.read_text(), load_file(weights_file)

    config = json.loads(original_config)
    del config["quantization_config"]["manifest"]["activation_scales"]
    config_file.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="activation_scales"):
        optimum_int8.INCModelForSequenceClassification.from_pretrained(tmp_path)

    config_file.write_text(original_config)
    weights = dict(original_weights)
    weights["bert.encoder.layer.0.output.dense.weight_int8"] = weights["bert.encoder.layer.0.output.dense.weight_int8"][:, :8].contiguous()
    save_file(weights, weights_file, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="output.dense.weight_int8"):
        optimum_int8.INCModelForSequenceClassification.from_pretrained(tmp_path)

    weights = dict(original_weights)
    del weights["bert.encoder.layer.1.attention.output.LayerNorm.bias"]
    save_file(weights, weights_file, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="LayerNorm.bias"):
        optimum_int8.INCModelForSequenceClassification.from_pretrained(tmp_path)


def test_integer_linears_replace_every_encoder_projection():
    quantized = _quantize(_build("ibert", "QuestionAnswering"), "QuestionAnswering")
    names = [name for name, module in quantized.named_modules() if isinstance(module, IntegerLinear)]
    assert len(names) == 2 * 6
    assert quantized.config.quantization_config.manifest.fallback_modules == {"qa_outputs": "float32"}
