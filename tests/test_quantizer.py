import copy
import re

import pytest
import torch
from torch import nn
from transformers import AutoModel, AutoModelForSeq2SeqLM, BartForConditionalGeneration, T5ForConditionalGeneration
from transformers.pytorch_utils import Conv1D

from conftest import TINY_ARCHS, run
from optimum_int8 import BFloat16Linear, INCModelForSeq2SeqLM, Int8Config, Int8DynamicLinear, Int8HfQuantizer, quantize_model
from optimum_int8.linear_modules import find_float_linears
from optimum_int8.nn.runtime import COMPUTE_DTYPES


def _fallback_for(arch):
    """One real fallback per architecture: a mid-network Linear (or Conv1D) module."""
    return next(name for name in find_float_linears(arch.build()) if ".1." in name or "layer.1" in name)


def _bf16_fallback_for(arch):
    """A second fallback, kept in bf16: a first-layer Linear (or Conv1D) module."""
    return next(name for name in find_float_linears(arch.build()) if ".0." in name or "layer.0" in name)


def _fallback_config(arch) -> Int8Config:
    return Int8Config(modules_in_fp32=[_fallback_for(arch)], modules_in_bf16=[_bf16_fallback_for(arch)])


def test_quantize_save_reload_is_bit_exact_through_both_loaders(arch, fp32_dir, tmp_path):
    fallback, bf16_fallback = _fallback_for(arch), _bf16_fallback_for(arch)
    model = arch.auto_class.from_pretrained(fp32_dir)
    expected_class = type(model)
    qmodel = quantize_model(model, _fallback_config(arch))
    inputs = arch.inputs()
    reference = run(qmodel, inputs)
    qmodel.save_pretrained(tmp_path / "int8")

    via_inc = arch.inc_class.from_pretrained(tmp_path / "int8")
    via_auto = arch.auto_class.from_pretrained(tmp_path / "int8")
    for loaded in (via_inc, via_auto):
        assert type(loaded) is expected_class
        assert torch.equal(run(loaded, inputs), reference)
        assert type(loaded.get_submodule(fallback)) in (nn.Linear, Conv1D)
        assert isinstance(loaded.get_submodule(bf16_fallback), BFloat16Linear)
        assert loaded.get_submodule(bf16_fallback).weight_bf16.dtype == torch.bfloat16
        manifest = loaded.config.quantization_config.manifest
        assert manifest.fallback_modules == {bf16_fallback: "bfloat16", fallback: "float32"}
        assert manifest.int8_modules == [n for n, m in loaded.named_modules() if isinstance(m, Int8DynamicLinear)]
        assert manifest.int8_modules == qmodel.config.quantization_config.manifest.int8_modules


def test_quantize_while_loading_equals_quantize_model(arch, fp32_dir):
    config = _fallback_config(arch)
    inputs = arch.inputs()
    after = quantize_model(arch.auto_class.from_pretrained(fp32_dir), config)
    while_loading = arch.auto_class.from_pretrained(fp32_dir, quantization_config=config)
    assert torch.equal(run(while_loading, inputs), run(after, inputs))
    after_state, loading_state = after.state_dict(), while_loading.state_dict()
    assert after_state.keys() == loading_state.keys()
    assert all(torch.equal(after_state[key], loading_state[key]) for key in after_state)
    assert while_loading.config.quantization_config.manifest.to_dict()["int8_modules"] == \
        after.config.quantization_config.manifest.int8_modules
    assert while_loading.config.quantization_config.manifest.fallback_modules == \
        after.config.quantization_config.manifest.fallback_modules


def test_int8_output_stays_close_to_fp32(arch, fp32_dir):
    inputs = arch.inputs()
    fp32 = run(arch.auto_class.from_pretrained(fp32_dir), inputs)
    int8 = run(quantize_model(arch.auto_class.from_pretrained(fp32_dir)), inputs)
    cosine = torch.nn.functional.cosine_similarity(fp32.flatten(), int8.flatten(), dim=0)
    assert cosine > 0.99


@pytest.mark.parametrize("model_class", [BartForConditionalGeneration, T5ForConditionalGeneration])
@pytest.mark.parametrize("lm_head_precision", ["int8", "float32", "bfloat16"])
def test_tied_lm_head_comes_back_right(model_class, lm_head_precision, tmp_path):
    arch = TINY_ARCHS["bart" if model_class is BartForConditionalGeneration else "t5"]
    arch.build().save_pretrained(tmp_path / "fp32")
    config = Int8Config(modules_in_fp32=["lm_head"] if lm_head_precision == "float32" else [],
                        modules_in_bf16=["lm_head"] if lm_head_precision == "bfloat16" else [])
    qmodel = quantize_model(AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "fp32"), config)
    inputs = arch.inputs()
    reference = run(qmodel, inputs)
    qmodel.save_pretrained(tmp_path / "int8")
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "int8")

    assert torch.equal(run(loaded, inputs), reference)
    shared = loaded.get_input_embeddings().weight
    if lm_head_precision == "float32":
        assert type(loaded.lm_head) is nn.Linear
        assert loaded.lm_head.weight is shared
    else:
        assert isinstance(loaded.lm_head, Int8DynamicLinear if lm_head_precision == "int8" else BFloat16Linear)
        fp32_shared = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "fp32").get_input_embeddings().weight
        # The embedding keeps its values, in the dtype the model computes in (bf16 on AMX CPUs).
        assert shared.dtype == COMPUTE_DTYPES[loaded.config.quantization_config.manifest.compute_dtype]
        assert torch.equal(shared, fp32_shared.to(shared.dtype))
        assert "lm_head" not in loaded.all_tied_weights_keys


def test_gpt2_conv1d_is_stored_in_linear_orientation(tmp_path):
    arch = TINY_ARCHS["gpt2"]
    model = arch.build()
    c_fc = model.transformer.h[0].mlp.c_fc
    qmodel = quantize_model(model)
    dequantized = qmodel.transformer.h[0].mlp.c_fc.weight()
    assert dequantized.shape == (c_fc.nf, c_fc.weight.shape[0])
    assert torch.allclose(dequantized, c_fc.weight.t(), atol=c_fc.weight.abs().max().item() / 127)


def test_a_quantized_model_deep_copies_into_an_equal_model():
    arch = TINY_ARCHS["bart"]
    qmodel = quantize_model(arch.build(), Int8Config(modules_in_bf16=["lm_head"]))
    copied = copy.deepcopy(qmodel)
    assert type(copied.hf_quantizer) is Int8HfQuantizer
    assert torch.equal(run(copied, arch.inputs()), run(qmodel, arch.inputs()))


@pytest.mark.parametrize("source", ["int8-checkpoint", "quantized-while-loading"])
def test_a_loaded_model_deep_copies_into_an_equal_model(source, tmp_path):
    arch = TINY_ARCHS["bart"]
    config = Int8Config(modules_in_bf16=["lm_head"], modules_in_fp32=["model.decoder.layers.0.fc2"])
    if source == "int8-checkpoint":
        quantize_model(arch.build(), config).save_pretrained(tmp_path / "int8")
        loaded = INCModelForSeq2SeqLM.from_pretrained(tmp_path / "int8")
    else:
        arch.build().save_pretrained(tmp_path / "fp32")
        loaded = INCModelForSeq2SeqLM.from_pretrained(tmp_path / "fp32", quantization_config=config)
    copied = copy.deepcopy(loaded)
    assert type(copied.lm_head) is BFloat16Linear and copied.lm_head is not loaded.lm_head
    assert torch.equal(run(copied, arch.inputs()), run(loaded, arch.inputs()))


def test_a_model_without_weights_is_refused_with_advice_that_works(bart_fp32_dir):
    from optimum_int8.tuning import INCQuantizer

    arch = TINY_ARCHS["bart"]
    with torch.device("meta"):
        empty = arch.auto_class.from_config(arch.config)
    advice = r"has no weights to quantize: \d+ tensor\(s\) are on the meta device \(first: model.shared.weight\).*" \
             r"from_pretrained\(path, quantization_config=Int8Config\(\)\)"
    for quantize in (quantize_model, INCQuantizer):
        with pytest.raises(ValueError, match=advice) as refused:
            quantize(empty)
        assert "cpu()" not in str(refused.value)  # moving a meta tensor to the CPU fails: no data to copy
    partly = arch.build()
    partly.model.encoder.layers[1].fc2.bias = nn.Parameter(torch.empty(32, device="meta"), requires_grad=False)
    with pytest.raises(ValueError, match=r"1 tensor\(s\) are on the meta device \(first: model.encoder.layers.1.fc2.bias\)"):
        quantize_model(partly)
    # The advice: quantizing while loading.
    qmodel = arch.auto_class.from_pretrained(bart_fp32_dir, quantization_config=Int8Config())
    assert isinstance(qmodel.model.encoder.layers[1].fc2, Int8DynamicLinear)


def test_modules_in_fp32_accepts_globs():
    qmodel = quantize_model(TINY_ARCHS["bart"].build(), Int8Config(modules_in_fp32=["model.decoder.layers.*.fc2"]))
    assert sorted(qmodel.config.quantization_config.manifest.fallback_modules) == [
        "model.decoder.layers.0.fc2", "model.decoder.layers.1.fc2"]


def test_a_module_in_both_fallback_lists_is_an_error():
    with pytest.raises(ValueError, match=r"names \['lm_head'\] in both modules_in_fp32 and modules_in_bf16"):
        quantize_model(TINY_ARCHS["bart"].build(), Int8Config(modules_in_fp32=["lm_head"], modules_in_bf16=["lm_*"]))


def test_unknown_fp32_module_name_is_rejected_with_a_suggestion():
    model = TINY_ARCHS["bart"].build()
    with pytest.raises(ValueError, match=r"Int8Config.modules_in_fp32: 'model.decoder.layer.0.fc2'.*Did you mean"):
        quantize_model(model, Int8Config(modules_in_fp32=["model.decoder.layer.0.fc2"]))
    assert not getattr(model, "is_quantized", False)
    assert quantize_model(model).is_quantized


def test_all_modules_excluded_is_an_error():
    with pytest.raises(ValueError, match="keeps all .* Linear modules in float"):
        quantize_model(TINY_ARCHS["bart"].build(), Int8Config(modules_in_fp32=["*"]))


def test_model_without_linear_layers_is_an_error():
    from transformers import ResNetConfig

    model = AutoModel.from_config(ResNetConfig(embedding_size=8, hidden_sizes=[8, 8], depths=[1, 1]))
    with pytest.raises(ValueError, match="no nn.Linear or Conv1D modules"):
        quantize_model(model)


def test_quantizing_twice_is_an_error():
    from optimum_int8.tuning import INCQuantizer

    qmodel = quantize_model(TINY_ARCHS["bart"].build())
    for quantize in (quantize_model, INCQuantizer):  # the tuner refuses before its fp32 baseline evaluation
        with pytest.raises(ValueError, match=r"already quantized \(quant_method='optimum_int8'\); quantize the fp32 model"):
            quantize(qmodel)


@pytest.mark.parametrize("device_map", [{"": "cuda:0"}, "cuda", {"model": "cpu", "lm_head": "disk"}])
def test_non_cpu_device_map_is_rejected(device_map):
    # transformers calls this hook with from_pretrained's device_map (which itself needs accelerate).
    with pytest.raises(ValueError, match="CPU kernels only"):
        Int8HfQuantizer(Int8Config()).validate_environment(device_map=device_map)
    Int8HfQuantizer(Int8Config()).validate_environment(device_map={"": "cpu"})


def test_user_config_object_is_not_mutated(bart_fp32_dir):
    config = Int8Config()
    AutoModelForSeq2SeqLM.from_pretrained(bart_fp32_dir, quantization_config=config)
    quantize_model(TINY_ARCHS["bart"].build(), config)
    assert config.manifest is None


def test_generate_with_a_real_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    from conftest import LEGACY_FIXTURES
    from optimum_int8 import INCModelForSeq2SeqLM

    fixture = LEGACY_FIXTURES / "bart_seq2seq_dynamic"
    tokenizer = AutoTokenizer.from_pretrained(fixture)
    qmodel = quantize_model(AutoModelForSeq2SeqLM.from_pretrained(fixture / "fp32"),
                            Int8Config(modules_in_fp32=["model.decoder.layers.0.fc2", "lm_head"]))
    qmodel.save_pretrained(tmp_path / "int8")
    tokenizer.save_pretrained(tmp_path / "int8")
    model = INCModelForSeq2SeqLM.from_pretrained(tmp_path / "int8")
    inputs = tokenizer("the quick brown fox jumps over the lazy dog", return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert torch.equal(generated, qmodel.generate(**inputs, max_new_tokens=8, do_sample=False))
    assert generated.shape[1] > 1
    assert isinstance(tokenizer.decode(generated[0], skip_special_tokens=True), str)


@pytest.mark.parametrize("while_loading", [False, True], ids=["in-memory", "while-loading"])
def test_nan_weights_at_quantization_time_name_the_module(tmp_path, bart, while_loading, caplog, capsys):
    model = bart.build()
    with torch.no_grad():
        model.model.encoder.layers[1].fc2.weight[0, 0] = float("nan")
    message = r"model.encoder.layers.1.fc2.weight holds 1 NaN or infinite value\(s\)"
    if not while_loading:
        with pytest.raises(ValueError, match=message):
            quantize_model(model)
        return
    model.save_pretrained(tmp_path / "fp32")
    # transformers gathers conversion errors into one RuntimeError; its load report carries ours.
    with pytest.raises(RuntimeError, match="automatic conversion of the weights"):
        INCModelForSeq2SeqLM.from_pretrained(tmp_path / "fp32", quantization_config=Int8Config())
    assert re.search(message, caplog.text + capsys.readouterr().err)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_source_model_reloads_with_the_same_outputs(dtype, tmp_path):
    arch = TINY_ARCHS["bart"]
    qmodel = quantize_model(arch.build().to(dtype), Int8Config())
    inputs = arch.inputs()
    reference = run(qmodel, inputs)
    qmodel.save_pretrained(tmp_path / "int8")
    assert torch.equal(run(arch.auto_class.from_pretrained(tmp_path / "int8"), inputs), reference)
