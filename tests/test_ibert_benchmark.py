"""The ibert entries of the benchmark registries (ibert/benchmark.py), run through the shared runner on a tiny preset."""

import os

import pytest
import torch

from optimum_int8.benchmark import PRESETS, VARIANTS, WORKLOADS, BenchmarkSettings, run_benchmark
from optimum_int8.benchmark.variants import load_float32
from optimum_int8.ibert import IntegerEncoder
from optimum_int8.ibert.benchmark import build_ibert_simulation
from optimum_int8.nn import integer_native


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
    assert integer.roberta.encoder.fast_path and integer.roberta.embeddings.fast_path  # the default path
    eager = VARIANTS["ibert-eager"].load(checkpoints / "ibert")
    assert not eager.roberta.encoder.fast_path and not eager.roberta.embeddings.fast_path
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
    monkeypatch.delenv(integer_native.CACHE_ENV, raising=False)
    seen = []

    def call(**inputs):  # what a first call finds: empty caches, and no native kernels loaded yet
        seen.append((os.environ["TORCHINDUCTOR_CACHE_DIR"], os.environ[integer_native.CACHE_ENV], integer_native.library_path()))

    integer_native.load()
    WORKLOADS[workload].run(_Seq2SeqStub(call) if workload == "first-encoder" else call, {}, {})
    [(inductor_cache, kernel_cache, loaded)] = seen
    assert inductor_cache == kernel_cache != str(tmp_path / "kept") and not os.path.exists(inductor_cache) and loaded is None
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "kept") and integer_native.CACHE_ENV not in os.environ
    assert integer_native.load() is not None and integer_native.library_path().parent == integer_native.cache_dir()
    assert not WORKLOADS[workload].by_default  # clearing the caches inside a default run would distort it


def test_the_simulation_variant_needs_a_roberta_checkpoint(tmp_path):
    PRESETS["tiny"].save(tmp_path / "bart", seed=0)
    with pytest.raises(ValueError, match="RobertaForSequenceClassification"):
        build_ibert_simulation(tmp_path / "bart", tmp_path / "out")
