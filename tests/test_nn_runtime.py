"""Kernel plans and compute dtypes of whole models: accuracy against fp32, save -> load, other CPUs."""

import logging

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig

from conftest import TINY_ARCHS, run
from optimum_int8 import BFloat16Linear, Int8Config, Int8DynamicLinear, quantize_model
from optimum_int8.nn import kernels, runtime
from optimum_int8.nn.kernels import CpuCapabilities, capabilities

from test_nn_kernels import AMX, AVX2, BACKENDS_HERE, VNNI, VNNI_BF16

LLAMA = LlamaConfig(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=64, bos_token_id=1, eos_token_id=2)
ARCHS = ["bart", "t5", "bert", "gpt2", "llama"]


def _build(arch: str):
    if arch == "llama":
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(LLAMA).eval()
    return TINY_ARCHS[arch].build()


def _inputs(arch: str) -> dict:
    return TINY_ARCHS["gpt2" if arch == "llama" else arch].inputs()


def _int8_modules(model):
    return [m for m in model.modules() if isinstance(m, Int8DynamicLinear)]


@pytest.mark.parametrize("cpu, expected", [(AMX, "bfloat16"), (VNNI_BF16, "float32"), (VNNI, "float32"), (AVX2, "float32")],
                         ids=["amx", "vnni-bf16", "vnni", "avx2"])
def test_auto_compute_dtype_is_bf16_only_where_amx_makes_it_fast(cpu, expected):
    assert runtime.resolve_compute_dtype("auto", cpu) == expected
    assert runtime.resolve_compute_dtype("float32", AMX) == "float32"
    with pytest.raises(ValueError, match="compute_dtype 'float16' is unknown"):
        runtime.resolve_compute_dtype("float16")


@pytest.mark.parametrize("compute_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("kernel", BACKENDS_HERE)
@pytest.mark.parametrize("arch", ARCHS)
def test_every_kernel_and_compute_dtype_stays_close_to_fp32(arch, kernel, compute_dtype):
    inputs = _inputs(arch)
    reference = run(_build(arch), inputs)
    qmodel = quantize_model(_build(arch), Int8Config(kernel=kernel, compute_dtype=compute_dtype))
    output = run(qmodel, inputs)
    assert all(m.kernel_plan.backend == kernel for m in _int8_modules(qmodel))
    assert qmodel.config.quantization_config.manifest.compute_dtype == compute_dtype
    if compute_dtype == "bfloat16":
        assert output.dtype == torch.bfloat16 and qmodel.get_input_embeddings().weight.dtype == torch.bfloat16
    cosine = nn.functional.cosine_similarity(output.float().flatten(), reference.flatten(), dim=0)
    # int8 alone measured >= 0.998 on these tiny random models; bf16 compute adds bf16 rounding around it.
    assert cosine > (0.995 if compute_dtype == "float32" else 0.99)


@pytest.mark.parametrize("compute_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("kernel", BACKENDS_HERE)
def test_save_and_reload_are_bit_exact_per_kernel_and_compute_dtype(kernel, compute_dtype, tmp_path):
    arch = TINY_ARCHS["bart"]
    config = Int8Config(kernel=kernel, compute_dtype=compute_dtype, modules_in_fp32=["model.decoder.layers.0.fc2"],
                        modules_in_bf16=["lm_head"])
    qmodel = quantize_model(arch.build(), config)
    inputs = arch.inputs()
    reference = run(qmodel, inputs)
    qmodel.save_pretrained(tmp_path / "int8")
    loaded = arch.inc_class.from_pretrained(tmp_path / "int8")
    assert torch.equal(run(loaded, inputs), reference)
    assert {m.kernel_plan for m in _int8_modules(loaded)} == {kernels.plan(kernel, activations=m.activations) for m in _int8_modules(loaded)}
    stored = loaded.config.quantization_config
    assert (stored.kernel, stored.compute_dtype) == (kernel, compute_dtype)
    fallback = loaded.get_submodule("model.decoder.layers.0.fc2")
    assert type(fallback) is nn.Linear and fallback.weight.dtype == torch.float32


def test_fp32_fallback_in_a_bf16_model_computes_in_fp32():
    arch = TINY_ARCHS["bart"]
    qmodel = quantize_model(arch.build(), Int8Config(compute_dtype="bfloat16", modules_in_fp32=["lm_head"]))
    seen = {}

    def record_input_dtype(module, args):
        seen["input"] = args[0].dtype

    qmodel.lm_head.register_forward_pre_hook(record_input_dtype)
    logits = run(qmodel, arch.inputs())
    # The tied embedding stays fp32 with its fp32 lm_head, and hands bf16 to the bf16 model.
    assert qmodel.lm_head.weight.dtype == torch.float32 and qmodel.lm_head.weight is qmodel.get_input_embeddings().weight
    assert seen["input"] == torch.float32 and logits.dtype == torch.bfloat16
    assert isinstance(qmodel.model.encoder.layers[0].fc1, Int8DynamicLinear)


def test_a_checkpoint_loads_and_runs_on_a_cpu_without_its_kernel(tmp_path, caplog):
    arch = TINY_ARCHS["bert"]
    qmodel = quantize_model(arch.build(), Int8Config(kernel="auto", compute_dtype="auto"))
    qmodel.save_pretrained(tmp_path / "int8")
    reference = run(arch.build(), arch.inputs())
    with capabilities.overridden(AVX2):
        loaded = arch.inc_class.from_pretrained(tmp_path / "int8")
    assert {m.kernel_plan for m in _int8_modules(loaded)} == {kernels.KernelPlan("fbgemm", True, activations="per_token")}
    output = run(loaded, arch.inputs())
    assert output.dtype == torch.float32
    assert nn.functional.cosine_similarity(output.flatten(), reference.flatten(), dim=0) > 0.99


def test_a_forced_kernel_this_cpu_lacks_falls_back_to_auto_when_loading(tmp_path, caplog):
    if kernels.onednn.unavailable_reason(capabilities.detect()):
        pytest.skip("needs the onednn backend to save the checkpoint")
    arch = TINY_ARCHS["bert"]
    quantize_model(arch.build(), Int8Config(kernel="onednn")).save_pretrained(tmp_path / "int8")
    with capabilities.overridden(AVX2), caplog.at_level(logging.WARNING):
        loaded = arch.inc_class.from_pretrained(tmp_path / "int8")
    assert {m.kernel_plan.backend for m in _int8_modules(loaded)} == {"fbgemm"}
    assert "kernel 'onednn'" in caplog.text and "AVX" in caplog.text
    with capabilities.overridden(AVX2), pytest.raises(kernels.KernelUnavailableError, match="'onednn'"):
        quantize_model(arch.build(), Int8Config(kernel="onednn"))


def test_environment_variable_chooses_the_kernel_of_auto_checkpoints(tmp_path, monkeypatch):
    arch = TINY_ARCHS["gpt2"]
    quantize_model(arch.build()).save_pretrained(tmp_path / "int8")
    monkeypatch.setenv(kernels.KERNEL_ENV, "fbgemm")
    loaded = arch.inc_class.from_pretrained(tmp_path / "int8")
    assert {m.kernel_plan.backend for m in _int8_modules(loaded)} == {"fbgemm"}
    assert runtime.describe(loaded).startswith("fbgemm (")


def test_configure_switches_a_loaded_model_and_back():
    arch = TINY_ARCHS["gpt2"]
    qmodel = quantize_model(arch.build(), Int8Config(compute_dtype="float32", modules_in_bf16=["lm_head"]))
    reference = run(qmodel, arch.inputs())
    settings = runtime.configure(qmodel, "fbgemm", True, "bfloat16")
    assert settings.describe() == "fbgemm (7-bit activations), compute bfloat16"
    assert isinstance(qmodel.lm_head, BFloat16Linear) and run(qmodel, arch.inputs()).dtype == torch.bfloat16
    runtime.configure(qmodel, "auto", None, "float32")
    output = run(qmodel, arch.inputs())
    assert output.dtype == torch.float32
    assert nn.functional.cosine_similarity(output.flatten(), reference.flatten(), dim=0) > 0.99


def test_capabilities_override_is_scoped():
    before = capabilities.current()
    with capabilities.overridden(CpuCapabilities(avx2=True)):
        assert kernels.plan().backend == "fbgemm" and kernels.plan().reduce_range
    assert capabilities.current() == before


def test_a_bf16_model_saves_its_float_tensors_in_their_fp32_dtype(tmp_path):
    from safetensors import safe_open

    arch = TINY_ARCHS["bart"]
    fp32 = arch.build()
    qmodel = quantize_model(arch.build(), Int8Config(compute_dtype="bfloat16"))
    assert qmodel.get_input_embeddings().weight.dtype == torch.bfloat16
    qmodel.save_pretrained(tmp_path / "int8")
    with safe_open(str(tmp_path / "int8" / "model.safetensors"), framework="pt") as handle:
        embedding = handle.get_tensor("model.shared.weight")
        norm = handle.get_tensor("model.encoder.layernorm_embedding.weight")
        stored = set(handle.keys())
    # fp32 in the file, holding exactly the bf16 values that ran: the format does not depend on the CPU.
    assert embedding.dtype == norm.dtype == torch.float32
    assert torch.equal(embedding, fp32.get_input_embeddings().weight.detach().to(torch.bfloat16).float())
    # The embedding the encoder and decoder share is stored once, as transformers stores a tied weight.
    assert "model.encoder.embed_tokens.weight" not in stored and "model.decoder.embed_tokens.weight" not in stored
    reloaded = arch.inc_class.from_pretrained(tmp_path / "int8")
    assert torch.equal(run(reloaded, arch.inputs()), run(qmodel, arch.inputs()))
    runtime.configure(qmodel, compute_dtype="float32")
    assert qmodel.get_input_embeddings().weight.dtype == torch.float32
    assert "model.shared.weight" in qmodel.state_dict() and qmodel.state_dict()["model.shared.weight"].dtype == torch.float32


def test_model_to_bfloat16_on_an_int8_model_runs_and_saves_the_format(tmp_path):
    arch = TINY_ARCHS["bart"]
    qmodel = quantize_model(arch.build(), Int8Config(compute_dtype="float32", modules_in_bf16=["lm_head"])).to(torch.bfloat16)
    reference = run(arch.build(), arch.inputs())
    output = run(qmodel, arch.inputs())
    assert output.dtype == torch.bfloat16
    assert nn.functional.cosine_similarity(output.float().flatten(), reference.flatten(), dim=0) > 0.99
    assert all(m.bias.dtype == torch.float32 for m in _int8_modules(qmodel) if m.bias is not None)
    qmodel.save_pretrained(tmp_path / "int8")
    loaded = arch.inc_class.from_pretrained(tmp_path / "int8")
    assert nn.functional.cosine_similarity(run(loaded, arch.inputs()).float().flatten(), reference.flatten(), dim=0) > 0.99


@pytest.mark.parametrize("compute_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("fallbacks", [{"modules_in_fp32": ["lm_head"]}, {"modules_in_bf16": ["lm_head"]}],
                         ids=["fp32-lm-head", "bf16-lm-head"])
def test_model_to_float16_follows_the_cast_whatever_the_compute_dtype(compute_dtype, fallbacks, tmp_path):
    """A bf16-computing model (the default on AMX CPUs) cast to fp16: its int8 layers and the embedding tied
    to an fp32 lm_head stop writing bf16 into fp16 norms, and the model runs in fp16."""
    arch = TINY_ARCHS["bart"]
    reference = run(arch.build(), arch.inputs())
    qmodel = quantize_model(arch.build(), Int8Config(compute_dtype=compute_dtype, **fallbacks))
    with pytest.raises(ValueError, match=r"`.half\(\)` is not supported for quantized model"):  # transformers' refusal
        qmodel.half()
    qmodel = qmodel.to(torch.float16)
    assert all(m.compute_dtype is None for m in _int8_modules(qmodel))
    output = run(qmodel, arch.inputs())
    assert output.dtype == torch.float16
    assert nn.functional.cosine_similarity(output.float().flatten(), reference.flatten(), dim=0) > 0.99
    qmodel.save_pretrained(tmp_path / "int8")
    loaded = arch.inc_class.from_pretrained(tmp_path / "int8")
    assert nn.functional.cosine_similarity(run(loaded, arch.inputs()).float().flatten(), reference.flatten(), dim=0) > 0.99


def test_moving_a_model_without_a_cast_keeps_its_compute_dtype():
    qmodel = quantize_model(TINY_ARCHS["bart"].build(), Int8Config(compute_dtype="bfloat16")).to("cpu").to(torch.bfloat16)
    assert {m.compute_dtype for m in _int8_modules(qmodel)} == {torch.bfloat16}
