"""The default, lazily compiled path of integer-only models (ibert/compilation.py): bit-identical to eager, one
compile for every batch size and sequence length, and an eager fallback with exactly one warning."""

import copy
import warnings

import pytest
import torch
from transformers import RobertaConfig, RobertaForSequenceClassification

from optimum_int8 import Int8Config, quantize_model
from optimum_int8.ibert import compilation, compile_integer_layers
from optimum_int8.nn import runtime
from optimum_int8.nn.kernels import onednn
from optimum_int8.nn.kernels.capabilities import CpuCapabilities, detect, overridden

VOCAB = 99


@pytest.fixture
def fresh_state(monkeypatch):
    """A process state where compiling has not failed yet (and is not switched off by the environment)."""
    monkeypatch.setattr(compilation, "_STATE", compilation._State())
    monkeypatch.delenv(compilation.COMPILE_ENV, raising=False)
    return compilation._STATE


def _integer_roberta():
    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=64, pad_token_id=1)
    model = RobertaForSequenceClassification(config).eval()
    generator = torch.Generator().manual_seed(1)
    calibration = [{"input_ids": torch.randint(4, VOCAB, (4, 16), generator=generator)} for _ in range(2)]
    return quantize_model(model, Int8Config(scheme="ibert"), calibration_data=calibration)


def _padded_batch(batch: int, length: int, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(4, VOCAB, (batch, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, length // 2:] = 0
    input_ids[0, length // 2:] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def test_compiled_outputs_are_bit_identical_and_new_shapes_do_not_recompile(fresh_state):
    model = _integer_roberta()
    assert model.roberta.encoder.compiled and model.roberta.embeddings.compiled  # the default after quantizing
    shapes = [(3, 12), (3, 20), (1, 9), (5, 33)]
    with torch.no_grad():
        compiled = [model.roberta(**_padded_batch(b, n, seed)).last_hidden_state for seed, (b, n) in enumerate(shapes)]
        graphs = compilation.compile_statistics()["graphs"]
        with compilation.eager():
            eager = [model.roberta(**_padded_batch(b, n, seed)).last_hidden_state for seed, (b, n) in enumerate(shapes)]
    assert fresh_state.failure is None
    # The embeddings and one graph for every layer, shared by all the batch sizes and lengths above.
    assert graphs == 2 and compilation.compile_statistics()["seconds"] > 0
    for got, expected in zip(compiled, eager):
        assert torch.equal(got, expected)


@pytest.mark.skipif(onednn.unavailable_reason(detect()) is not None, reason="oneDNN's int8 GEMM needs VNNI or AMX")
def test_outputs_do_not_depend_on_the_integer_gemm_kernel(fresh_state):
    model = _integer_roberta()
    with overridden(CpuCapabilities(avx2=True, avx512=True)):  # no VNNI: every GEMM on torch._int_mm
        reference = _integer_roberta()
    layer, reference_layer = model.roberta.encoder.layer[0], reference.roberta.encoder.layer[0]
    assert (layer.attention.self.qkv.kernel, layer.output.dense.packed.kernel) == ("onednn", "onednn")
    assert (reference_layer.attention.self.qkv.kernel, reference_layer.output.dense.packed.kernel) == (
        "torch._int_mm", "torch._int_mm")
    # What the benchmark report prints: 2 layers of 4 GEMMs (Q, K and V as one).
    assert runtime.describe(model) == "integer GEMMs: onednn x8"
    assert runtime.describe(reference) == "integer GEMMs: torch._int_mm x8"
    batch = _padded_batch(3, 20, seed=7)
    with torch.no_grad():
        compiled = model.roberta(**batch).last_hidden_state
        with compilation.eager():
            eager = reference.roberta(**batch).last_hidden_state
    assert fresh_state.failure is None
    assert torch.equal(compiled, eager)
    with torch.no_grad(), compilation.eager():  # a copy repacks the same codes for the same kernels
        assert torch.equal(copy.deepcopy(model).roberta(**batch).last_hidden_state, eager)


def test_a_failing_compiler_falls_back_to_eager_with_exactly_one_warning(fresh_state, monkeypatch):
    def broken_compile(function, **options):
        def compiled(*args):
            raise RuntimeError("C++ compile error: g++ not found")
        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    double = compilation.CompiledFunction(lambda x: x * 2, dynamic={0: (0,)})
    triple = compilation.CompiledFunction(lambda x: x * 3, dynamic={})
    x = torch.arange(6).reshape(2, 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = [double(x), double(x), triple(x)]
    assert [w.category for w in caught] == [compilation.IntegerCompileWarning]
    assert "g++ not found" in str(caught[0].message)
    assert all(torch.equal(r, x * k) for r, k in zip(results, (2, 2, 3)))
    assert not compilation.compile_enabled() and "RuntimeError" in fresh_state.failure


def test_an_error_of_the_inputs_is_raised_not_taken_for_a_compiler_failure(fresh_state):
    def needs_matching_shapes(a, b):
        return a + b

    function = compilation.CompiledFunction(needs_matching_shapes, dynamic={})
    with pytest.raises(RuntimeError, match="size of tensor"):
        function(torch.ones(2), torch.ones(3))
    assert fresh_state.failure is None and compilation.compile_enabled()


def test_compiling_is_switched_off_by_the_environment_the_model_and_eager(fresh_state, monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda function, **options: calls.append(function) or function)
    function = compilation.CompiledFunction(lambda x: x + 1, dynamic={})
    monkeypatch.setenv(compilation.COMPILE_ENV, "0")
    assert not compilation.compile_enabled() and torch.equal(function(torch.zeros(1)), torch.ones(1))
    monkeypatch.delenv(compilation.COMPILE_ENV)
    with compilation.eager():
        assert not compilation.compile_enabled() and torch.equal(function(torch.zeros(1)), torch.ones(1))
    assert calls == []
    assert compilation.compile_enabled() and torch.equal(function(torch.zeros(1)), torch.ones(1)) and len(calls) == 1

    model = compile_integer_layers(_integer_roberta(), enabled=False)
    assert not model.roberta.encoder.compiled and not model.roberta.embeddings.compiled
    assert compile_integer_layers(model).roberta.encoder.compiled
    with pytest.raises(ValueError, match="no integer-only modules"):
        compile_integer_layers(torch.nn.Linear(2, 2))
