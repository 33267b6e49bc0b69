"""The fast generation path of int8 causal LMs (generation.py): a static cache and a compiled decode step inside
transformers' generate, with the eager path's tokens, one graph for every prompt length, an eager fallback with
exactly one warning, and the cases it leaves eager."""

import json
import warnings

import pytest
import torch
from conftest import TINY_LLAMA, VOCAB
from transformers import AutoModelForCausalLM

import optimum_int8
from optimum_int8 import Int8Config, generation, quantize_model
from optimum_int8.compilation import COMPILE_ENV

NEW_TOKENS = 6


@pytest.fixture
def fresh_state(monkeypatch):
    """A process where compiling has not failed yet, not switched off, with dynamo's caches and counters empty."""
    monkeypatch.setattr(generation, "_STATE", generation._State())
    monkeypatch.delenv(COMPILE_ENV, raising=False)
    torch._dynamo.reset()
    yield generation._STATE
    torch._dynamo.reset()


@pytest.fixture
def llama_dir(tmp_path):
    TINY_LLAMA.build().save_pretrained(tmp_path / "fp32")
    return tmp_path / "fp32"


def _weight_only(llama_dir, **options):
    config = Int8Config(scheme="int8_weight_only", **options)
    return AutoModelForCausalLM.from_pretrained(llama_dir, quantization_config=config).eval()


def _prompt(length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(4, VOCAB, (1, length), generator=torch.Generator().manual_seed(seed))


def _greedy(model, prompt, **options):
    with torch.inference_mode():
        return model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=NEW_TOKENS,
                              min_new_tokens=NEW_TOKENS, output_scores=True, return_dict_in_generate=True, **options)


def _graphs() -> int:
    return torch._dynamo.utils.counters["stats"].get("unique_graphs", 0)


def _assert_same_decoding(model, prompt):
    """The compiled decode gives the eager (dynamic-cache) decode's tokens, and its scores to float tolerance."""
    compiled = _greedy(model, prompt)
    eager = _greedy(model, prompt, disable_compile=True, cache_implementation="dynamic")
    assert torch.equal(compiled.sequences, eager.sequences)
    for got, expected in zip(compiled.scores, eager.scores):
        torch.testing.assert_close(got, expected, rtol=2e-2, atol=2e-2)


def test_a_weight_only_causal_lm_decodes_through_a_compiled_step_with_the_eager_tokens(fresh_state, llama_dir):
    model = _weight_only(llama_dir)
    assert model.generation_config.cache_implementation == "static"
    assert model.generation_config.compile_config.backend == generation.BACKEND
    _assert_same_decoding(model, _prompt(11))
    assert _graphs() >= 1 and fresh_state.failure is None


def test_new_prompt_lengths_reuse_one_dynamic_graph(fresh_state, llama_dir):
    model = _weight_only(llama_dir)
    for length in (9, 14):  # the first length specializes, the second compiles one graph dynamic in the length
        _greedy(model, _prompt(length))
    graphs = _graphs()
    for length in (17, 23, 30):
        _greedy(model, _prompt(length, seed=length))
    assert _graphs() == graphs


def test_reloaded_and_quantize_model_results_compile_too(fresh_state, llama_dir, tmp_path):
    model = _weight_only(llama_dir)
    model.save_pretrained(tmp_path / "int8")
    saved = json.loads((tmp_path / "int8" / "generation_config.json").read_text())
    assert "cache_implementation" not in saved and "compile_config" not in saved  # runtime settings, not saved
    assert model.generation_config.cache_implementation == "static"  # and still the saved model's own
    reloaded = optimum_int8.INCModelForCausalLM.from_pretrained(tmp_path / "int8")
    quantized = quantize_model(TINY_LLAMA.build(), Int8Config(scheme="int8_weight_only"))
    for model in (reloaded, quantized):
        assert model.generation_config.compile_config is not None
        _assert_same_decoding(model, _prompt(8))


def test_a_failing_compiler_decodes_eagerly_with_exactly_one_warning(fresh_state, llama_dir, monkeypatch):
    import torch._inductor.compile_fx

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch._inductor.compile_fx, "compile_fx", broken)
    model = _weight_only(llama_dir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _assert_same_decoding(model, _prompt(12))
        _greedy(model, _prompt(15))
    assert [w.category for w in caught if issubclass(w.category, generation.DecodeCompileWarning)] == [
        generation.DecodeCompileWarning]
    assert "no C++ compiler found" in fresh_state.failure


def test_the_text_generation_pipeline_runs_the_compiled_model(fresh_state, llama_dir):
    from word_tokenizer import word_tokenizer

    model = _weight_only(llama_dir)
    generator = optimum_int8.pipeline("text-generation", model=model, tokenizer=word_tokenizer())
    out = generator("w5 w6 w7", max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    assert out[0]["generated_text"].startswith("w5 w6 w7") and _graphs() >= 1


@pytest.mark.parametrize("case", ["switched off", "per-token scheme", "float fallbacks", "user's own cache", "seq2seq"])
def test_left_eager(fresh_state, llama_dir, bart_fp32_dir, monkeypatch, case):
    if case == "switched off":
        _weight_only(llama_dir).save_pretrained(llama_dir.parent / "int8")
        monkeypatch.setenv(COMPILE_ENV, "0")
        model = AutoModelForCausalLM.from_pretrained(llama_dir.parent / "int8")
        assert model.generation_config.cache_implementation is None  # transformers' default cache, as saved
    elif case == "per-token scheme":  # its single-row activation qparams break the graph: not marked compileable
        model = AutoModelForCausalLM.from_pretrained(llama_dir, quantization_config=Int8Config(scheme="int8_per_token"))
        assert not model.hf_quantizer.is_compileable
    elif case == "float fallbacks":  # their prepacked oneDNN weights do not lower in inductor
        model = _weight_only(llama_dir, modules_in_bf16=["lm_head"], modules_in_fp32=["model.layers.0.mlp.down_proj"])
        model.save_pretrained(llama_dir.parent / "int8")
        reloaded = AutoModelForCausalLM.from_pretrained(llama_dir.parent / "int8")
        assert not model.hf_quantizer.is_compileable and not reloaded.hf_quantizer.is_compileable
    elif case == "user's own cache":
        model = TINY_LLAMA.build()
        model.generation_config.cache_implementation = "dynamic"
        model = quantize_model(model, Int8Config(scheme="int8_weight_only"))
        assert model.generation_config.cache_implementation == "dynamic"
    else:
        model = optimum_int8.INCModelForSeq2SeqLM.from_pretrained(
            bart_fp32_dir, quantization_config=Int8Config(scheme="int8_weight_only"))
    assert model.generation_config.compile_config is None


def test_a_left_padded_batch_and_beam_search_run_through_the_compiled_path(fresh_state, llama_dir):
    model = _weight_only(llama_dir)
    prompts = torch.randint(4, VOCAB, (2, 12), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(prompts)
    prompts[0, :4], mask[0, :4] = 0, 0
    options = dict(attention_mask=mask, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                   pad_token_id=0)
    with torch.inference_mode():
        compiled = model.generate(prompts, **options)
        eager = model.generate(prompts, **options, disable_compile=True, cache_implementation="dynamic")
        beams = model.generate(prompts, **options, num_beams=2)
    assert torch.equal(compiled, eager) and beams.shape == (2, 12 + NEW_TOKENS) and _graphs() >= 1


def test_a_static_cache_the_user_named_gets_the_compiled_step_too(fresh_state):
    model = TINY_LLAMA.build()
    model.generation_config.cache_implementation = "static"
    model = quantize_model(model, Int8Config(scheme="int8_weight_only"))
    assert model.generation_config.compile_config is not None


def test_decode_steps_skip_only_the_packed_int8_weights_guards(fresh_state, llama_dir, monkeypatch):
    decisions = []

    class Recording(type(generation.PACKED_WEIGHT_GUARDS)):
        def __call__(self, entries):
            kept = super().__call__(entries)
            decisions.extend(zip(entries, kept))
            return kept

    monkeypatch.setattr(generation, "PACKED_WEIGHT_GUARDS", Recording(generation.PACKED_WEIGHT_GUARDS))
    model = _weight_only(llama_dir)
    _assert_same_decoding(model, _prompt(10))
    dropped = [entry for entry, kept in decisions if not kept]
    packed_linears = sum(isinstance(module, optimum_int8.nn.Int8WeightOnlyLinear) for module in model.modules())
    assert len(dropped) == 2 * packed_linears  # each one's int8 weight and scales, in the one decode graph
    assert all(entry.guard_type == "TENSOR_MATCH" and "._packed." in entry.name for entry in dropped)
    kept_tensors = [entry.name for entry, kept in decisions if kept and entry.guard_type == "TENSOR_MATCH"]
    assert any("norm" in name and "_parameters['weight']" in name for name in kept_tensors)  # float weights stay
    # The filter is its own description: the generation config still prints and hashes as JSON.
    config = json.loads(model.generation_config.to_json_string())
    assert config["compile_config"]["options"]["guard_filter_fn"] == str(generation.PACKED_WEIGHT_GUARDS)
    assert isinstance(hash(model.generation_config), int)
