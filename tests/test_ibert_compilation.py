"""The default fast path of integer-only models (ibert/compilation.py): native kernels, bit-identical to eager for every
batch size, sequence length and mask, and an eager fallback with exactly one warning."""

import copy
import warnings

import pytest
import torch
from transformers import RobertaConfig, RobertaForSequenceClassification

from optimum_int8 import Int8Config, quantize_model
from optimum_int8.ibert import compilation, compile_integer_layers
from optimum_int8.nn import integer_native, runtime
from optimum_int8.nn.kernels import onednn
from optimum_int8.nn.kernels.capabilities import CpuCapabilities, detect, overridden

VOCAB = 99


@pytest.fixture
def fresh_state(monkeypatch):
    """A process state that has not warned yet (and where the fast path is not switched off by the environment)."""
    monkeypatch.setattr(compilation, "_STATE", compilation._State())
    monkeypatch.delenv(compilation.COMPILE_ENV, raising=False)
    return compilation._STATE


needs_native = pytest.mark.skipif(integer_native.load() is None, reason="no C++ compiler for the native kernels")


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


@needs_native
def test_the_fast_path_is_bit_identical_to_eager_for_every_shape_and_mask(fresh_state):
    model = _integer_roberta()
    assert model.roberta.encoder.fast_path and model.roberta.embeddings.fast_path  # the default after quantizing
    shapes = [(3, 12), (3, 20), (1, 9), (5, 33)]
    with torch.no_grad():
        fast = [model.roberta(**_padded_batch(b, n, seed)).last_hidden_state for seed, (b, n) in enumerate(shapes)]
        with compilation.eager():
            eager = [model.roberta(**_padded_batch(b, n, seed)).last_hidden_state for seed, (b, n) in enumerate(shapes)]
    assert not fresh_state.warned and compilation.load_statistics()["kernels"] == integer_native.library_path()
    for got, expected in zip(fast, eager):
        assert torch.equal(got, expected)


@needs_native
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
        fast = model.roberta(**batch).last_hidden_state
        with compilation.eager():
            eager = reference.roberta(**batch).last_hidden_state
    assert torch.equal(fast, eager)
    with torch.no_grad(), compilation.eager():  # a copy repacks the same codes for the same kernels
        assert torch.equal(copy.deepcopy(model).roberta(**batch).last_hidden_state, eager)


def test_a_machine_without_a_compiler_runs_eagerly_with_exactly_one_warning(fresh_state, monkeypatch, tmp_path):
    monkeypatch.setenv(integer_native.CACHE_ENV, str(tmp_path))  # nothing built here yet
    monkeypatch.setenv("CXX", "no-such-compiler")
    integer_native.forget()
    model = _integer_roberta()
    batch = _padded_batch(3, 12, seed=1)
    try:
        with warnings.catch_warnings(record=True) as caught, torch.no_grad():
            warnings.simplefilter("always")
            outputs = [model.roberta(**batch).last_hidden_state for _ in range(2)]
        with torch.no_grad(), compilation.eager():
            eager = model.roberta(**batch).last_hidden_state
    finally:
        monkeypatch.undo()
        integer_native.forget()
    assert [w.category for w in caught] == [compilation.IntegerCompileWarning]
    assert "no-such-compiler" in str(caught[0].message) and compilation.COMPILE_ENV in str(caught[0].message)
    assert all(torch.equal(output, eager) for output in outputs)
    assert compilation.load_statistics()["kernels"] is None


def test_the_fast_path_is_switched_off_by_the_environment_the_model_eager_and_a_trace(fresh_state, monkeypatch):
    monkeypatch.setenv(compilation.COMPILE_ENV, "0")
    assert not compilation.fast_path_ready()
    monkeypatch.delenv(compilation.COMPILE_ENV)
    with compilation.eager():
        assert not compilation.fast_path_ready()
    assert compilation.fast_path_ready() == (integer_native.load() is not None)
    traced = torch.compile(lambda x: x + int(compilation.fast_path_ready()), fullgraph=True, backend="eager")
    assert torch.equal(traced(torch.zeros(1)), torch.zeros(1))  # inside a trace: the reference ops, which trace

    model = compile_integer_layers(_integer_roberta(), enabled=False)
    assert not model.roberta.encoder.fast_path and not model.roberta.embeddings.fast_path
    assert compile_integer_layers(model).roberta.encoder.fast_path
    with pytest.raises(ValueError, match="no integer-only modules"):
        compile_integer_layers(torch.nn.Linear(2, 2))
