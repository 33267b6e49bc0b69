"""The ibert entries of the benchmark registries (ibert/benchmark.py), run through the shared runner on a tiny preset."""

import pytest
import torch

from optimum_int8.benchmark import PRESETS, VARIANTS, WORKLOADS, BenchmarkSettings, run_benchmark
from optimum_int8.benchmark.variants import load_float32
from optimum_int8.ibert import IntegerEncoder
from optimum_int8.ibert.benchmark import build_ibert_simulation


def test_ibert_variants_run_in_one_benchmark(tmp_path):
    assert {"ibert", "ibert-compiled", "fp32-compiled", "ibert-simulation"} <= set(VARIANTS)
    assert "forward" in WORKLOADS and "roberta-base" in PRESETS
    result = run_benchmark(BenchmarkSettings(
        model="roberta-tiny", workdir=tmp_path, variants=["fp32", "ibert", "ibert-simulation"], workloads=["forward"],
        repeats=1, warmup=0, measure_load=False,
    ))
    assert [variant.name for variant in result.variants] == ["fp32", "ibert", "ibert-simulation"]
    assert all(variant.seconds["forward"][0] > 0 for variant in result.variants)
    assert result.workloads == {"forward": "forward 2x32"}

    checkpoints = tmp_path / "roberta-tiny-seed0"
    integer = VARIANTS["ibert"].load(checkpoints / "ibert")
    assert isinstance(integer.roberta.encoder, IntegerEncoder)
    simulation = VARIANTS["ibert-simulation"].load(checkpoints / "ibert-simulation")
    assert simulation.config.quant_mode
    assert float(simulation.ibert.encoder.layer[0].attention.self.query_activation.x_max) > 1e-3
    fp32 = load_float32(checkpoints / "fp32")
    assert torch.equal(simulation.ibert.encoder.layer[1].output.dense.weight, fp32.roberta.encoder.layer[1].output.dense.weight)


def test_the_simulation_variant_needs_a_roberta_checkpoint(tmp_path):
    PRESETS["tiny"].save(tmp_path / "bart", seed=0)
    with pytest.raises(ValueError, match="RobertaForSequenceClassification"):
        build_ibert_simulation(tmp_path / "bart", tmp_path / "out")
