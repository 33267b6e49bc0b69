"""The ibert entries of the benchmark registries (ibert/benchmark.py), run through the shared runner on a tiny preset."""

import os

import pytest
import torch

from optimum_int8.benchmark import PRESETS, VARIANTS, WORKLOADS, BenchmarkSettings, run_benchmark
from optimum_int8.benchmark.variants import load_float32
from optimum_int8.ibert import IntegerEncoder, compilation
from optimum_int8.ibert.benchmark import build_ibert_simulation


@pytest.fixture(autouse=True)
def eager_integer_layers():
    """These tests check numerics and loading, the same compiled or not: eager keeps them free of compile time
    (test_ibert_compilation.py runs the compiled path)."""
    with compilation.eager():
        yield


def test_ibert_variants_run_in_one_benchmark(tmp_path):
    assert {"ibert", "ibert-eager", "fp32-compiled", "ibert-simulation"} <= set(VARIANTS)
    assert {"forward", "first-forward"} <= set(WORKLOADS) and {"roberta-base", "bert-base"} <= set(PRESETS)
    result = run_benchmark(BenchmarkSettings(
        model="roberta-tiny", workdir=tmp_path, variants=["fp32", "ibert", "ibert-eager", "ibert-simulation"],
        workloads=["forward", "first-forward"], repeats=1, warmup=0, measure_load=False,
    ))
    assert [variant.name for variant in result.variants] == ["fp32", "ibert", "ibert-eager", "ibert-simulation"]
    assert all(variant.seconds[name][0] > 0 for variant in result.variants for name in ("forward", "first-forward"))
    assert result.workloads == {"forward": "forward 2x32", "first-forward": "first call, forward 2x32"}

    checkpoints = tmp_path / "roberta-tiny-seed0"
    integer = VARIANTS["ibert"].load(checkpoints / "ibert")
    assert isinstance(integer.roberta.encoder, IntegerEncoder)
    assert integer.roberta.encoder.compiled and integer.roberta.embeddings.compiled  # the default path
    eager = VARIANTS["ibert-eager"].load(checkpoints / "ibert")
    assert not eager.roberta.encoder.compiled and not eager.roberta.embeddings.compiled
    simulation = VARIANTS["ibert-simulation"].load(checkpoints / "ibert-simulation")
    assert simulation.config.quant_mode
    assert float(simulation.ibert.encoder.layer[0].attention.self.query_activation.x_max) > 1e-3
    fp32 = load_float32(checkpoints / "fp32")
    assert torch.equal(simulation.ibert.encoder.layer[1].output.dense.weight, fp32.roberta.encoder.layer[1].output.dense.weight)


class _Seq2SeqStub:
    """What the first-encoder workload calls: ``get_encoder()(**inputs)``."""

    def __init__(self, encoder):
        self.encoder = encoder

    def get_encoder(self):
        return self.encoder


@pytest.mark.parametrize("workload", ["first-forward", "first-encoder"])
def test_the_first_call_workloads_compile_in_an_empty_cache_restore_the_setting_and_run_only_when_named(
        workload, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "kept"))
    seen = []

    def call(**inputs):
        seen.append(os.environ["TORCHINDUCTOR_CACHE_DIR"])

    WORKLOADS[workload].run(_Seq2SeqStub(call) if workload == "first-encoder" else call, {}, {})
    assert len(seen) == 1 and seen[0] != str(tmp_path / "kept") and not os.path.exists(seen[0])
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "kept")
    assert not WORKLOADS[workload].by_default  # clearing the caches inside a default run would distort it


def test_the_simulation_variant_needs_a_roberta_checkpoint(tmp_path):
    PRESETS["tiny"].save(tmp_path / "bart", seed=0)
    with pytest.raises(ValueError, match="RobertaForSequenceClassification"):
        build_ibert_simulation(tmp_path / "bart", tmp_path / "out")
