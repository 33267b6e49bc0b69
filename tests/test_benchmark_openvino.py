"""The OpenVINO variants (benchmark/openvino_runtime.py): run on the encoder workload only, skipped elsewhere,
close to the torch fp32 encoder, int8 weights in the int8 IR; skipped with a one-line note without openvino."""

import collections
import copy
import importlib.metadata
import importlib.util
import logging

import pytest
import torch
from torch import nn

from optimum_int8.benchmark import PRESETS, BenchmarkSettings, markdown_table, run_benchmark
from optimum_int8.benchmark.openvino_runtime import (
    GRAPH,
    OpenVINOEncoder,
    build_openvino_fp32,
    build_openvino_int8,
    load_openvino_bf16,
    load_openvino_int8,
)
from optimum_int8.benchmark.runner import machine_info
from optimum_int8.benchmark.variants import load_float32
from optimum_int8.benchmark.workloads import random_token_ids

OPENVINO_VARIANTS = ["openvino-int8", "openvino-bf16"]
# BART-large's init std (0.02) gives each Linear a gain of 0.02 * sqrt(1024); at the tiny preset's width (64)
# the same gain needs std 0.08. With the preset's own 0.02 the layers carry ~3% of the output, so an error in
# them would hide under any tolerance; at 0.08 they carry ~50% (checked below).
LINEAR_STD = 0.02 * (1024 / 64) ** 0.5


def _relative_error(output: torch.Tensor, reference: torch.Tensor) -> float:
    return float((output - reference).norm() / reference.norm())


def _requires_openvino():
    pytest.importorskip("openvino", reason="the openvino-* variants need 'optimum-int8[openvino]'")
    pytest.importorskip("nncf", reason="the openvino-int8 variant needs 'optimum-int8[openvino]'")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    _requires_openvino()
    workdir = tmp_path_factory.mktemp("openvino-benchmark")
    result = run_benchmark(BenchmarkSettings(
        model="tiny", workdir=workdir, variants=["fp32", *OPENVINO_VARIANTS], workloads=["encoder", "greedy"],
        repeats=2, warmup=1, threads=1, measure_load=False, sizes={"greedy": {"new_tokens": 2}},
    ))
    return result, workdir / "tiny-seed0"


def test_openvino_variants_time_the_encoder_and_are_skipped_on_greedy(tiny_run):
    result, _ = tiny_run
    assert [v.name for v in result.variants] == ["fp32", *OPENVINO_VARIANTS]
    assert result.variant("fp32").skipped == [] and set(result.variant("fp32").seconds) == {"encoder", "greedy"}
    for name in OPENVINO_VARIANTS:
        variant = result.variant(name)
        assert variant.skipped == ["greedy"] and set(variant.seconds) == {"encoder"}
        assert len(variant.seconds["encoder"]) == 2 and min(variant.seconds["encoder"]) > 0
        assert result.speedup(variant, "encoder", "fp32") > 0 and result.speedup(variant, "greedy", "fp32") is None
    rows = {line.split(" | ")[0].lstrip("| "): line for line in markdown_table(result).splitlines()}
    assert "| skipped | – | – |" in rows["OpenVINO int8 (encoder)"] and "skipped" not in rows["torch fp32"]
    data = result.to_dict()
    assert [v["skipped"] for v in data["variants"]] == [[], ["greedy"], ["greedy"]]
    assert data["machine"]["versions"]["openvino"] == importlib.metadata.version("openvino")
    assert data["machine"]["versions"]["nncf"] == importlib.metadata.version("nncf")


def test_checkpoint_bytes_are_the_graph_and_its_weights(tiny_run):
    result, checkpoints = tiny_run
    for name in OPENVINO_VARIANTS:
        graph = checkpoints / name / GRAPH
        assert result.variant(name).checkpoint_bytes == graph.stat().st_size + graph.with_suffix(".bin").stat().st_size


def test_openvino_uses_torchs_thread_count_and_the_latency_hint(tiny_run):
    _, checkpoints = tiny_run
    encoder = load_openvino_int8(checkpoints / "openvino-int8")
    assert encoder.compiled.get_property("INFERENCE_NUM_THREADS") == torch.get_num_threads()
    assert encoder.compiled.get_property("PERFORMANCE_HINT") == "LATENCY"


@pytest.fixture(scope="module")
def scaled_tiny(tmp_path_factory):
    """The tiny preset with Linear weights at ``LINEAR_STD``, its fp32 and OpenVINO builds, and a padded batch."""
    _requires_openvino()
    directory = tmp_path_factory.mktemp("openvino-scaled")
    torch.manual_seed(0)
    model = PRESETS["tiny"].build().eval()
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=LINEAR_STD)
    model.save_pretrained(directory / "fp32")
    for name, build in (("openvino-fp32", build_openvino_fp32), ("openvino-int8", build_openvino_int8)):
        (directory / name).mkdir()
        build(directory / "fp32", directory / name)
    inputs = random_token_ids(model.config, 2, 16, torch.Generator().manual_seed(5))
    inputs["attention_mask"][1, 10:] = 0
    return directory, load_float32(directory / "fp32").get_encoder(), inputs


def test_the_converted_graph_computes_the_torch_encoder(scaled_tiny):
    """In fp32 the graph is the torch encoder, padding mask included: float32 reassociation only (~1e-7)."""
    directory, encoder, inputs = scaled_tiny
    with torch.no_grad():
        reference = encoder(**inputs).last_hidden_state
        without_layers = copy.deepcopy(encoder)
        without_layers.layers = nn.ModuleList()
        embeddings_only = without_layers(**inputs).last_hidden_state
    assert _relative_error(embeddings_only, reference) > 0.3  # the layers matter, so the tolerances below bite
    output = OpenVINOEncoder(directory / "openvino-fp32", precision="f32").get_encoder()(**inputs).last_hidden_state
    assert _relative_error(output, reference) < 1e-5


def test_openvino_bf16_is_within_bf16_rounding_of_fp32(scaled_tiny):
    """bf16 keeps 8 significant bits (unit roundoff 2^-8); a few roundings per layer over 2 layers stay under
    4 units, 2^-6 (measured ~0.002)."""
    directory, encoder, inputs = scaled_tiny
    bf16 = load_openvino_bf16(directory / "openvino-fp32")
    if {"avx512_bf16", "amx_bf16"} & set(machine_info()["isa"]):
        assert bf16.inference_precision == "bf16"
    with torch.no_grad():
        reference = encoder(**inputs).last_hidden_state
    assert _relative_error(bf16.get_encoder()(**inputs).last_hidden_state, reference) < 2 ** -6


def test_openvino_int8_is_close_to_fp32(scaled_tiny):
    """Static per-tensor 8-bit activations cost ~1% per quantized tensor; over 12 quantized MatMuls and the
    attention inputs this model measures 0.05 (fp32 compute) to 0.11 (bf16 compute, OpenVINO's default on AMX).
    0.25 is half of what the layers contribute, so an int8 graph that lost a layer fails. (Ignoring the padding
    mask costs only 0.08: the fp32 graph's test above is the one that checks the mask.)"""
    directory, encoder, inputs = scaled_tiny
    with torch.no_grad():
        reference = encoder(**inputs).last_hidden_state
    output = load_openvino_int8(directory / "openvino-int8").get_encoder()(**inputs).last_hidden_state
    assert _relative_error(output, reference) < 0.25


def test_openvino_int8_stores_every_linear_weight_in_int8(scaled_tiny):
    import openvino

    directory, encoder, _ = scaled_tiny
    graph = openvino.Core().read_model(directory / "openvino-int8" / GRAPH)
    int8_constants = collections.Counter(
        tuple(op.get_output_shape(0)) for op in graph.get_ops()
        if op.get_type_name() == "Constant" and op.get_element_type() == openvino.Type.i8
    )
    linear_weights = collections.Counter(tuple(m.weight.shape) for m in encoder.modules() if isinstance(m, nn.Linear))
    assert len(linear_weights) == 3 and int8_constants >= linear_weights  # q/k/v/out 64x64, fc1, fc2, per layer
    assert any(op.get_type_name() == "FakeQuantize" for op in graph.get_ops())  # activations too: static int8
    # int8 codes are a quarter of fp32; per-channel and per-row fp32 scales, biases and norms add ~2% here
    fp32_bin = (directory / "openvino-fp32" / GRAPH).with_suffix(".bin").stat().st_size
    assert (directory / "openvino-int8" / GRAPH).with_suffix(".bin").stat().st_size < 0.3 * fp32_bin


def test_without_openvino_the_variants_are_skipped_with_a_one_line_note(tmp_path, monkeypatch, caplog):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, package=None: None if name in ("openvino", "nncf") else find_spec(name, package))
    settings = BenchmarkSettings(model="tiny", workdir=tmp_path, variants=["fp32", *OPENVINO_VARIANTS],
                                 workloads=["encoder"], repeats=1, warmup=0, measure_load=False)
    with caplog.at_level(logging.WARNING, logger="optimum_int8.benchmark.runner"):
        result = run_benchmark(settings)
    assert [v.name for v in result.variants] == ["fp32"]
    notes = [record.getMessage() for record in caplog.records if record.name == "optimum_int8.benchmark.runner"]
    assert notes == [
        "skipping variant openvino-int8: openvino, nncf not installed (pip install 'optimum-int8[openvino]')",
        "skipping variant openvino-bf16: openvino not installed (pip install 'optimum-int8[openvino]')",
    ]
    with pytest.raises(ImportError, match="none of the chosen variants"):
        run_benchmark(BenchmarkSettings(model="tiny", workdir=tmp_path, variants=OPENVINO_VARIANTS, measure_load=False))


def test_a_variant_that_runs_none_of_the_workloads_is_left_out_with_a_note(tmp_path, caplog):
    _requires_openvino()
    with caplog.at_level(logging.WARNING, logger="optimum_int8.benchmark.runner"):
        result = run_benchmark(BenchmarkSettings(
            model="tiny", workdir=tmp_path, variants=["fp32", "openvino-bf16"], workloads=["greedy"], repeats=1,
            warmup=0, measure_load=False, sizes={"greedy": {"new_tokens": 1}},
        ))
    assert [v.name for v in result.variants] == ["fp32"]
    assert "skipping variant openvino-bf16: it runs ['encoder', 'first-encoder'] only, none of ['greedy']" in caplog.text
    with pytest.raises(ValueError, match="none of the chosen variants runs any of the workloads"):
        run_benchmark(BenchmarkSettings(model="tiny", workdir=tmp_path, variants=["openvino-bf16"],
                                        workloads=["greedy"], measure_load=False))
