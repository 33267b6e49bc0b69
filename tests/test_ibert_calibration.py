"""Activation scales (ibert/calibration.py), and agreement with transformers' own quant_mode=True I-BERT."""

import copy

import pytest
import torch
from transformers import BertConfig, BertForTokenClassification, IBertConfig, IBertForMaskedLM, IBertForTokenClassification

import optimum_int8
from optimum_int8 import Int8Config, quantize_model
from optimum_int8.ibert import calibrate, scales_from_ibert
from optimum_int8.nn import integer_ops as ops

VOCAB = 99


def _config(layers: int, quant_mode: bool) -> IBertConfig:
    return IBertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=layers, num_attention_heads=4,
                       intermediate_size=128, max_position_embeddings=64, num_labels=5, quant_mode=quant_mode,
                       hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def _ids(seed: int, batch: int = 16) -> torch.Tensor:
    return torch.randint(4, VOCAB, (batch, 16), generator=torch.Generator().manual_seed(seed))


def _calibrated_simulation(model_class, layers: int):
    """transformers' I-BERT in quant_mode=True, its QuantAct ranges recorded by training-mode passes."""
    torch.manual_seed(0)
    model = model_class(_config(layers, quant_mode=True))
    model.train()
    with torch.no_grad():
        for batch in _ids(2).split(8):
            model(input_ids=batch)
    return model.eval()


def test_calibrate_observes_every_point_of_every_layer():
    torch.manual_seed(0)
    model = IBertForTokenClassification(_config(2, quant_mode=False)).eval()
    scales = calibrate(model, [{"input_ids": batch} for batch in _ids(3).split(8)])
    assert set(scales) == {"embeddings"} | {
        f"encoder.layer.{i}.{name}" for i in range(2) for name in ("attention.self", "attention.output", "intermediate", "output")
    }
    attention = scales["encoder.layer.1.attention.self"]
    assert attention["exp"] == pytest.approx(1 / 32767)
    assert all(scale > 0 for points in scales.values() for scale in points.values())
    with torch.no_grad():
        hidden = model.ibert.embeddings(input_ids=_ids(3))[0]
    # the embedding LayerNorm output maps its largest observed magnitude to 127
    assert scales["embeddings"]["output"] == pytest.approx(float(hidden.abs().max()) / 127, rel=1e-6)


def test_a_quant_mode_model_is_calibrated_on_its_float_computation():
    simulation = _calibrated_simulation(IBertForTokenClassification, 1)
    float_model = IBertForTokenClassification(_config(1, quant_mode=False)).eval()
    float_model.load_state_dict(simulation.state_dict())
    batches = [{"input_ids": batch} for batch in _ids(4).split(8)]
    assert calibrate(simulation, batches) == calibrate(float_model, batches)


def test_scales_from_ibert_convert_its_integer_exp_range():
    simulation = _calibrated_simulation(IBertForTokenClassification, 1)
    scales = scales_from_ibert(simulation)
    attention = scales["encoder.layer.0.attention.self"]
    act = simulation.ibert.encoder.layer[0].attention.self
    assert attention["query"] == pytest.approx(float(act.query_activation.x_max.abs().max()) / 127, rel=1e-3)
    # I-BERT's softmax QuantAct sees integers of scale a * s**2 / 2**30, with s drifting while the query and
    # key ranges settle; converted back to a value, its range is close to exp(0) = 1.
    assert attention["exp"] * 32767 == pytest.approx(1.0, rel=0.05)


def test_uncalibrated_quant_mode_model_needs_calibration_data():
    torch.manual_seed(0)
    model = IBertForTokenClassification(_config(1, quant_mode=True)).eval()
    with pytest.raises(ValueError, match="not calibrated"):
        quantize_model(model, Int8Config(scheme="ibert"))


@pytest.mark.parametrize("model_class", [IBertForMaskedLM, IBertForTokenClassification])
@pytest.mark.parametrize("layers", [1, 2])
def test_integer_model_agrees_with_transformers_simulation(model_class, layers):
    simulation = _calibrated_simulation(model_class, layers)
    input_ids = _ids(1)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[:4, 10:] = 0
    integer = quantize_model(copy.deepcopy(simulation), Int8Config(scheme="ibert"))  # I-BERT's own ranges
    float_model = model_class(_config(layers, quant_mode=False)).eval()
    float_model.load_state_dict(simulation.state_dict())
    with torch.no_grad():
        simulated, computed, reference = (
            m(input_ids=input_ids, attention_mask=attention_mask).logits for m in (simulation, integer, float_model)
        )
    real = attention_mask.bool()
    to_simulation = (computed - simulated)[real].abs()
    simulation_error, integer_error = (simulated - reference)[real].abs(), (computed - reference)[real].abs()
    # Same weights, same scales: the two quantized models round a few values differently (docs/ibert.md lists
    # where they differ), far less than either differs from fp32; the integer model is no further from fp32.
    assert to_simulation.max() < 0.5 * simulation_error.max()
    assert integer_error.mean() < 1.1 * simulation_error.mean()
    assert (computed.argmax(-1) == simulated.argmax(-1))[real].float().mean() >= 0.97


def test_activation_scale_matches_quant_act():
    assert ops.activation_scale(12.7, 8) == pytest.approx(0.1)
    assert ops.activation_scale(0.0, 8) == pytest.approx(1e-8 / 127)


def test_a_calibrated_ibert_checkpoint_converts_while_loading(tmp_path):
    simulation = _calibrated_simulation(IBertForTokenClassification, 1)
    simulation.save_pretrained(tmp_path)
    loaded = optimum_int8.INCModelForTokenClassification.from_pretrained(
        tmp_path, quantization_config=Int8Config(scheme="ibert")
    )
    converted = quantize_model(copy.deepcopy(simulation), Int8Config(scheme="ibert"))
    input_ids = _ids(5, batch=4)
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=input_ids).logits, converted(input_ids=input_ids).logits)
    assert loaded.config.quantization_config.manifest.activation_scales == converted.config.quantization_config.manifest.activation_scales


def test_a_float_checkpoint_cannot_convert_while_loading(tmp_path):
    torch.manual_seed(0)
    BertForTokenClassification(BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                           intermediate_size=64)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="calibration_data"):
        optimum_int8.INCModelForTokenClassification.from_pretrained(tmp_path, quantization_config=Int8Config(scheme="ibert"))
