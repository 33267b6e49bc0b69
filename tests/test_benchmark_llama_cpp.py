"""The llama.cpp peer (benchmark/gguf_export.py, benchmark/llama_cpp_runtime.py): the F32 GGUF export reads back in
transformers as the same model; the llama-cpp-* variants compute the torch model's logits and greedy tokens and run
the causal-LM workloads; skipped with a one-line note without llama-cpp-python."""

import importlib.util
import logging

import pytest
import torch
from torch import nn

from optimum_int8.benchmark import PRESETS, BenchmarkSettings, run_benchmark
from optimum_int8.benchmark.variants import load_float32
from optimum_int8.benchmark.workloads import random_token_ids

pytest.importorskip("gguf", reason="the GGUF export needs 'optimum-int8[test]' or 'optimum-int8[llama-cpp]'")

from optimum_int8.benchmark.gguf_export import write_gguf_f32  # noqa: E402
from optimum_int8.benchmark.llama_cpp_runtime import (  # noqa: E402
    GGUF_FILE,
    LlamaCppCausalLM,
    build_llama_cpp_f32,
    build_llama_cpp_q8_0,
    load_llama_cpp,
)

LLAMA_CPP_VARIANTS = ["llama-cpp-q8-0", "llama-cpp-f32"]
# At the tiny preset's init (std 0.02) the attention scores are ~0, softmax is uniform and the rotary embedding
# (hence the order of the q/k rows) hardly changes the output; these widths make attention and logits sharp.
PROJECTION_STD = 0.3


def _requires_llama_cpp():
    pytest.importorskip("llama_cpp", reason="the llama-cpp-* variants need 'optimum-int8[llama-cpp]'")


def _relative_error(output: torch.Tensor, reference: torch.Tensor) -> float:
    return float((output - reference).norm() / reference.norm())


def _save_tiny_llama(directory, tied: bool):
    torch.manual_seed(0)
    model = PRESETS["tiny-llama"].build()
    model.config.tie_word_embeddings = tied
    model.tie_weights()
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name.endswith(("q_proj", "k_proj", "lm_head")):
            nn.init.normal_(module.weight, std=PROJECTION_STD)
    model.eval().save_pretrained(directory)
    return load_float32(directory)


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def tiny_llama(request, tmp_path_factory):
    """(fp32 directory, the fp32 model, an F32 GGUF export of it in ``<directory>/../gguf``), untied and tied."""
    base = tmp_path_factory.mktemp("llama-cpp")
    model = _save_tiny_llama(base / "fp32", tied=request.param)
    (base / "gguf").mkdir()
    write_gguf_f32(base / "fp32", base / "gguf" / GGUF_FILE)
    return base / "fp32", model, base / "gguf"


def test_transformers_reads_the_gguf_export_back_as_the_same_model(tiny_llama):
    """transformers' GGUF loader undoes llama.cpp's q/k row order: every weight comes back bit-exact, so the export
    wrote them in llama.cpp's order (without the interleaving, q_proj and k_proj would come back scrambled)."""
    from transformers import AutoModelForCausalLM

    _, model, gguf_dir = tiny_llama
    read_back = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=GGUF_FILE, dtype=torch.float32).eval()
    assert read_back.config.tie_word_embeddings == model.config.tie_word_embeddings
    expected = model.state_dict()
    assert read_back.state_dict().keys() == expected.keys()
    for name, tensor in read_back.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    inputs = random_token_ids(model.config, 1, 16, torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(read_back(**inputs).logits, model(**inputs).logits)


def test_tied_embeddings_write_no_output_tensor(tiny_llama):
    import gguf

    _, model, gguf_dir = tiny_llama
    reader = gguf.GGUFReader(gguf_dir / GGUF_FILE)
    names = {tensor.name for tensor in reader.tensors}
    assert ("output.weight" in names) != model.config.tie_word_embeddings
    assert {tensor.tensor_type for tensor in reader.tensors} == {gguf.GGMLQuantizationType.F32}
    assert reader.fields["tokenizer.ggml.model"].contents() == "none"
    assert reader.fields["llama.vocab_size"].contents() == model.config.vocab_size


def test_a_model_that_is_not_a_llama_is_refused_naming_its_config(tmp_path):
    PRESETS["tiny"].build().save_pretrained(tmp_path / "bart")
    with pytest.raises(ValueError, match=r"bart/config\.json: architectures \['BartForConditionalGeneration'\]"):
        write_gguf_f32(tmp_path / "bart", tmp_path / GGUF_FILE)


@pytest.fixture(scope="module")
def llama_cpp_models(tiny_llama, tmp_path_factory):
    """{name: model} for ``tiny_llama``: the fp32 torch model; llama.cpp F32 and Q8_0 as the variants load them;
    and F32 with attention in float32 (no flash attention, an f32 KV cache)."""
    _requires_llama_cpp()
    import llama_cpp

    fp32_dir, model, _ = tiny_llama
    base = tmp_path_factory.mktemp("llama-cpp-builds")
    for name, build in (("f32", build_llama_cpp_f32), ("q8_0", build_llama_cpp_q8_0)):
        (base / name).mkdir()
        build(fp32_dir, base / name)
    float32_attention = dict(flash_attn_type=0, type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    return {
        "torch": model, "f32": load_llama_cpp(base / "f32"), "q8_0": load_llama_cpp(base / "q8_0"),
        "f32, float32 attention": LlamaCppCausalLM(base / "f32" / GGUF_FILE, context_options=float32_attention),
    }


def _last_logits_error(models, name) -> float:
    model = models["torch"]
    inputs = random_token_ids(model.config, 1, 24, torch.Generator().manual_seed(2))
    with torch.no_grad():
        reference = model(**inputs).logits[:, -1:]
    output = models[name](**inputs).logits
    assert output.shape == (1, 1, model.config.vocab_size)
    return _relative_error(output, reference)


def test_llama_cpp_f32_with_float32_attention_computes_the_torch_models_logits(llama_cpp_models):
    """Same weights, float32 throughout: ~1e-6, the order of the sums only. With the q/k rows left in transformers'
    order it measures 1.16 (untied) and 0.10 (tied) here."""
    assert _last_logits_error(llama_cpp_models, "f32, float32 attention") < 1e-5


def test_llama_cpp_f32_as_the_variant_runs_it_is_within_f16_attention_rounding(llama_cpp_models):
    """llama.cpp's defaults (flash attention, f16 KV cache) round q, k and v to f16 (unit roundoff 2^-11):
    2e-3 (untied) and 1e-4 (tied) here."""
    assert _last_logits_error(llama_cpp_models, "f32") < 1e-2


def test_llama_cpp_q8_0_is_within_8_bit_rounding_of_fp32(llama_cpp_models):
    """Q8_0 rounds weights to 8 bits per 32-value block, and llama.cpp quantizes the activations of its dot products
    to 8 bits the same way: 0.044 (untied) and 0.010 (tied) here, where the sharp attention amplifies rounding.
    With the q/k rows in transformers' order Q8_0 measures 0.10 to 1.17."""
    assert _last_logits_error(llama_cpp_models, "q8_0") < 0.06


def test_llama_cpp_greedy_decoding_returns_the_torch_tokens(llama_cpp_models):
    model = llama_cpp_models["torch"]
    inputs = random_token_ids(model.config, 1, 16, torch.Generator().manual_seed(3))
    options = dict(num_beams=1, do_sample=False, max_new_tokens=12, min_new_tokens=12)
    with torch.no_grad():
        expected = model.generate(**inputs, **options)
    assert torch.equal(llama_cpp_models["f32, float32 attention"].generate(**inputs, **options), expected)
    for name in ("f32", "q8_0"):
        output = llama_cpp_models[name].generate(**inputs, **options)
        assert output.shape == expected.shape == (1, 16 + 12) and torch.equal(output[:, :16], inputs["input_ids"])


def test_llama_cpp_uses_torchs_thread_count_for_steps_and_prompts(llama_cpp_models):
    import llama_cpp

    for name in ("f32", "q8_0"):
        context = llama_cpp_models[name].context
        assert llama_cpp.llama_n_threads(context) == llama_cpp.llama_n_threads_batch(context) == torch.get_num_threads()


def test_llama_cpp_refuses_what_it_does_not_run(llama_cpp_models):
    model, f32 = llama_cpp_models["torch"], llama_cpp_models["f32"]
    batch = random_token_ids(model.config, 2, 8, torch.Generator().manual_seed(4))
    with pytest.raises(ValueError, match="batch 1 only"):
        f32(**batch)
    single = random_token_ids(model.config, 1, 8, torch.Generator().manual_seed(4))
    with pytest.raises(ValueError, match="exactly max_new_tokens"):
        f32.generate(**single, max_new_tokens=4, min_new_tokens=None)
    with pytest.raises(ValueError, match="greedily only"):
        f32.generate(**single, num_beams=2, max_new_tokens=4, min_new_tokens=4)
    with pytest.raises(ValueError, match="exceed the model's 128 positions"):
        f32.generate(**single, max_new_tokens=121, min_new_tokens=121)


def test_llama_cpp_variants_run_prefill_and_decode_in_the_benchmark(tmp_path):
    _requires_llama_cpp()
    result = run_benchmark(BenchmarkSettings(
        model="tiny-llama", workdir=tmp_path, variants=["fp32", *LLAMA_CPP_VARIANTS], repeats=2, warmup=1, threads=1,
        sizes={"prefill": {"prompt_length": 16}, "decode": {"prompt_length": 16, "new_tokens": 3}},
    ))
    assert [v.name for v in result.variants] == ["fp32", *LLAMA_CPP_VARIANTS]
    for name in LLAMA_CPP_VARIANTS:
        variant = result.variant(name)
        assert variant.skipped == [] and set(variant.seconds) == {"prefill", "decode"}
        assert all(len(times) == 2 and min(times) > 0 for times in variant.seconds.values())
        assert variant.checkpoint_bytes == (tmp_path / "tiny-llama-seed0" / name / GGUF_FILE).stat().st_size
        assert variant.load_seconds > 0
    # Q8_0 stores 34 bytes per 32 weights where F32 stores 128; norms stay F32
    assert result.variant("llama-cpp-q8-0").checkpoint_bytes < 0.35 * result.variant("llama-cpp-f32").checkpoint_bytes
    assert result.to_dict()["machine"]["versions"]["llama-cpp-python"]


def test_without_llama_cpp_the_variants_are_skipped_with_a_one_line_note(tmp_path, monkeypatch, caplog):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, package=None: None if name == "llama_cpp" else find_spec(name, package))
    settings = BenchmarkSettings(model="tiny-llama", workdir=tmp_path, variants=["fp32", *LLAMA_CPP_VARIANTS],
                                 workloads=["prefill"], repeats=1, warmup=0, measure_load=False,
                                 sizes={"prefill": {"prompt_length": 8}})
    with caplog.at_level(logging.WARNING, logger="optimum_int8.benchmark.runner"):
        result = run_benchmark(settings)
    assert [v.name for v in result.variants] == ["fp32"]
    notes = [record.getMessage() for record in caplog.records if record.name == "optimum_int8.benchmark.runner"]
    assert notes == [
        f"skipping variant {name}: llama_cpp not installed (pip install 'optimum-int8[llama-cpp]')"
        for name in LLAMA_CPP_VARIANTS
    ]
