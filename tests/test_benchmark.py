"""The benchmark runs end to end on the tiny preset and reports consistent numbers (never timing asserts)."""

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from optimum_int8 import cli
from optimum_int8.benchmark import (
    PRESETS,
    VARIANTS,
    BenchmarkSettings,
    markdown_table,
    read_module_list,
    run_benchmark,
    table_rows,
    token_rates,
    write_json,
    write_plot,
)
from optimum_int8.benchmark.onnx_runtime import OrtSeq2SeqLM, export_onnx
from optimum_int8.benchmark.profiling import OTHER_OPS, category
from optimum_int8.benchmark.variants import checkpoint_bytes, load_float32
from optimum_int8.nn import kernels
from optimum_int8.benchmark.workloads import random_token_ids

TINY_SIZES = {"greedy": {"new_tokens": 4}, "beam": {"new_tokens": 4}, "encoder": {"batch": 2, "length": 16}}


@pytest.fixture(scope="module")
def tiny_result(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("benchmark")
    settings = BenchmarkSettings(
        model="tiny", workdir=workdir, fallbacks=["lm_head", "model.decoder.layers.*.fc2"], fallbacks_source="test",
        repeats=2, warmup=1, threads=1, sizes=TINY_SIZES,
    )
    return run_benchmark(settings), workdir


def test_every_variant_is_timed_on_every_workload_it_runs_with_positive_numbers(tiny_result):
    result, _ = tiny_result
    names = [variant.name for variant in result.variants]
    assert names[:3] == ["fp32", "bf16", "int8"] and names[5] == "ort-int8"
    assert [name.rsplit("-", 1)[0] for name in names[3:5]] == ["int8-fallback-fp32", "int8-fallback-bf16"]
    # the OpenVINO variants where the [openvino] extra is installed; they run the encoder only
    assert names[6:] == [name for name in ("openvino-int8", "openvino-bf16") if not VARIANTS[name].missing_requirements()]
    assert set(result.workloads) == {"greedy", "beam", "encoder"}
    for variant in result.variants:
        assert variant.skipped == (["greedy", "beam"] if variant.name.startswith("openvino-") else [])
        assert set(variant.seconds) == set(result.workloads) - set(variant.skipped)
        assert all(len(times) == 2 and all(t > 0 for t in times) for times in variant.seconds.values())
        assert variant.checkpoint_bytes > 0 and variant.load_seconds > 0 and variant.load_peak_bytes > 0


def test_ratios_are_computed_from_the_medians_of_the_same_run(tiny_result):
    result, _ = tiny_result
    fp32, bf16 = result.variant("fp32"), result.variant("bf16")
    data = result.to_dict()
    for variant, row in zip(result.variants, data["variants"]):
        for workload in variant.seconds:
            assert row["median_seconds"][workload] == variant.median(workload)
            assert row["speedup"]["fp32"][workload] == pytest.approx(fp32.median(workload) / variant.median(workload))
            assert row["speedup"]["bf16"][workload] == pytest.approx(bf16.median(workload) / variant.median(workload))
    assert result.speedup(fp32, "greedy", "fp32") == 1.0


def test_sizes_come_from_the_checkpoints_and_int8_is_smaller(tiny_result):
    result, workdir = tiny_result
    base = workdir / "tiny-seed0"
    assert result.variant("fp32").checkpoint_bytes == checkpoint_bytes(base / "fp32")
    assert result.variant("int8").checkpoint_bytes < result.variant("fp32").checkpoint_bytes
    assert result.variant("bf16").checkpoint_bytes < result.variant("fp32").checkpoint_bytes
    assert json.loads((base / "int8" / "config.json").read_text())["quantization_config"]["quant_method"] == "optimum_int8"


def test_table_json_and_plot(tiny_result, tmp_path):
    result, _ = tiny_result
    table = markdown_table(result)
    assert table.count("\n") == len(result.variants) + 1 and "vs bf16" in table
    write_json(result, tmp_path / "result.json")
    data = json.loads((tmp_path / "result.json").read_text())
    assert data["settings"]["sizes"]["greedy"]["new_tokens"] == 4 and data["machine"]["cpu_count"] >= 1
    assert write_plot(result, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"


def test_onnx_export_generates_what_torch_generates(tmp_path):
    """The exported fp32 graphs and the ORT search loops reproduce transformers' greedy and beam search."""
    torch.manual_seed(3)
    model = PRESETS["tiny"].build().eval()
    torch.nn.init.normal_(model.lm_head.weight, std=0.3)  # sharp logits, so the search is not degenerate
    model.save_pretrained(tmp_path / "fp32")
    model = load_float32(tmp_path / "fp32")
    export_onnx(model, tmp_path / "onnx")
    shutil.copy(tmp_path / "fp32" / "config.json", tmp_path / "onnx" / "config.json")
    ort = OrtSeq2SeqLM(tmp_path / "onnx", threads=1)
    inputs = random_token_ids(model.config, 2, 12, torch.Generator().manual_seed(0))
    inputs["attention_mask"][1, 9:] = 0
    with torch.inference_mode():
        for beams in (1, 3):
            expected = model.generate(**inputs, num_beams=beams, do_sample=False, max_new_tokens=6, min_new_tokens=6,
                                      forced_eos_token_id=None)
            assert torch.equal(ort.generate(**inputs, num_beams=beams, max_new_tokens=6, min_new_tokens=6), expected)
        hidden = ort.get_encoder()(**inputs).last_hidden_state
        assert torch.allclose(hidden, model.get_encoder()(**inputs).last_hidden_state, atol=1e-4)


def test_cli_runs_the_benchmark_and_writes_its_files(tmp_path, capsys):
    (tmp_path / "fallbacks.txt").write_text("# kept in float\nlm_head\n\n")
    assert read_module_list(tmp_path / "fallbacks.txt") == ["lm_head"]
    code = cli.main([
        "benchmark", "tiny", "--workdir", str(tmp_path / "work"), "--variants", "fp32", "int8", "--workloads", "greedy",
        "--repeats", "1", "--warmup", "0", "--threads", "1", "--no-load", "--size", "greedy.new_tokens=2", "--profile",
        "--json", str(tmp_path / "out.json"), "--plot", str(tmp_path / "out.png"),
    ])
    assert code == 0
    data = json.loads((tmp_path / "out.json").read_text())
    assert [v["name"] for v in data["variants"]] == ["fp32", "int8"] and data["workloads"] == {"greedy": "greedy 32→2, bs 1"}
    assert data["variants"][1]["load_seconds"] is None
    fp32_profile, int8_profile = (v["profile"]["greedy"] for v in data["variants"])
    assert int8_profile["int8 GEMM"] > 0 and fp32_profile["int8 GEMM"] == 0 and fp32_profile["float GEMM"] > 0
    assert sum(int8_profile.values()) - int8_profile["wall"] == pytest.approx(int8_profile["wall"], rel=0.05)
    output = capsys.readouterr().out
    assert "| int8, every Linear |" in output and "one profiled run" in output


def test_unknown_names_and_wrong_fallbacks_fail_early(tmp_path):
    with pytest.raises(ValueError, match="unknown variant"):
        run_benchmark(BenchmarkSettings(model="tiny", workdir=tmp_path, variants=["fp16"]))
    with pytest.raises(FileNotFoundError, match="neither a preset"):
        run_benchmark(BenchmarkSettings(model=str(tmp_path / "missing"), workdir=tmp_path))
    with pytest.raises(ValueError, match="matches no Linear module"):
        run_benchmark(BenchmarkSettings(model="tiny", workdir=tmp_path, fallbacks=["decoder.fc9"], measure_load=False))


def test_gemm_kernel_script_times_every_candidate_on_every_shape():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    import gemm_kernels

    results = gemm_kernels.main(["--rows", "2", "--rounds", "1"])
    assert set(results) == {(2, i, o) for i, o in gemm_kernels.SHAPES}
    runnable = [name for name, backend in kernels.BACKENDS.items() if backend.unavailable_reason(kernels.capabilities.detect()) is None]
    # Per backend fp32 and bf16 in/out (fbgemm also 7-bit), then torch's bf16 and fp32 GEMMs.
    expected = 2 * len(runnable) + ("fbgemm" in runnable) + 3
    assert all(len(medians) == expected and min(medians.values()) > 0 for medians in results.values())


def test_scheme_variants_build_and_a_causal_lm_runs_prefill_and_decode(tmp_path):
    """The calibrated static variant builds from the benchmark's calibration inputs; causal LMs get their own
    workloads (and only those)."""
    settings = BenchmarkSettings(
        model="tiny-llama", workdir=tmp_path, variants=["fp32", "int8", "int8-static-smoothquant", "int8-weight-only",
                                             "int8-weight-only-eager"],
        repeats=1, warmup=0, threads=1, measure_load=False,
        sizes={"prefill": {"prompt_length": 16}, "decode": {"prompt_length": 16, "new_tokens": 3}},
    )
    result = run_benchmark(settings)
    assert set(result.workloads) == {"prefill", "decode"}
    for variant in result.variants:
        assert set(variant.seconds) == {"prefill", "decode"} and all(t > 0 for ts in variant.seconds.values() for t in ts)
    config = json.loads((tmp_path / "tiny-llama-seed0" / "int8-static-smoothquant" / "config.json").read_text())
    manifest = config["quantization_config"]["manifest"]
    assert config["quantization_config"]["scheme"] == "int8_static" and manifest["calibration"]["samples"] > 0
    # Token rates from the medians: prefill tokens over prefill time, new tokens over the decode's time after it.
    rates = token_rates(result)
    for variant in result.variants:
        prefill, decode = variant.median("prefill"), variant.median("decode")
        assert rates[variant.name]["prefill"] == pytest.approx(16 / prefill)
        assert rates[variant.name].get("decode") == (pytest.approx(3 / (decode - prefill)) if decode > prefill else None)
    headers, rows = table_rows(result)
    assert "prefill tok/s" in headers and "decode tok/s" in headers
    write_json(result, tmp_path / "llm.json")
    saved = json.loads((tmp_path / "llm.json").read_text())
    assert saved["variants"][0]["tokens_per_second"]["prefill"] == pytest.approx(rates["fp32"]["prefill"])


def test_the_eager_decode_variant_loads_the_weight_only_checkpoint_without_generation_defaults(tmp_path):
    PRESETS["tiny-llama"].save(tmp_path / "fp32", seed=0)
    compiled, eager = VARIANTS["int8-weight-only"], VARIANTS["int8-weight-only-eager"]
    fast = compiled.load(compiled.checkpoint(tmp_path / "fp32", tmp_path))
    assert eager.checkpoint(tmp_path / "fp32", tmp_path) == compiled.checkpoint(tmp_path / "fp32", tmp_path)
    plain = eager.load(eager.checkpoint(tmp_path / "fp32", tmp_path))
    assert fast.generation_config.compile_config is not None and fast.generation_config.cache_implementation == "static"
    assert plain.generation_config.compile_config is None and plain.generation_config.cache_implementation is None


def test_variants_that_only_load_differently_share_one_checkpoint(tmp_path):
    PRESETS["tiny"].save(tmp_path / "fp32", seed=0)
    static, compiled = VARIANTS["int8-static-smoothquant"], VARIANTS["int8-static-smoothquant-compiled"]
    directory = static.checkpoint(tmp_path / "fp32", tmp_path / "work")
    assert compiled.checkpoint(tmp_path / "fp32", tmp_path / "work") == directory
    assert sorted(path.name for path in (tmp_path / "work").iterdir()) == ["int8-static-smoothquant"]


def test_profile_categories_count_weight_only_gemms_and_compiled_regions():
    assert category("aten::_weight_int8pack_mm") == "int8 GEMM"
    assert category("## Call CompiledFxGraph abc123 ##") == category("TorchDynamo Cache Lookup") == "compiled graph and guards"
    assert category("aten::addmm") == "float GEMM" and category("aten::nonexistent") == OTHER_OPS


def test_the_report_says_when_another_cpu_is_emulated(monkeypatch):
    from optimum_int8.benchmark.report import machine_line
    from optimum_int8.benchmark.results import BenchmarkResult
    from optimum_int8.benchmark.runner import machine_info

    monkeypatch.delenv(kernels.capabilities.CAPABILITIES_ENV, raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    native = BenchmarkResult(model="m", workloads={}, variants=[], settings={}, machine=machine_info())
    assert "emulating" not in machine_line(native)
    monkeypatch.setenv(kernels.capabilities.CAPABILITIES_ENV, "avx2,avx512,avx512_vnni")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_VNNI")
    emulated = machine_info()
    assert emulated["isa"] == native.machine["isa"]  # the CPU's own flags stay on record
    assert emulated["isa_choices"] == ["avx2", "avx512", "avx512_vnni"]
    lines = machine_line(BenchmarkResult(model="m", workloads={}, variants=[], settings={}, machine=emulated)).splitlines()
    assert "  emulating: oneDNN limited to ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI" in lines
    assert ("  emulating: kernel choices for flags avx2, avx512, avx512_vnni" in lines) == (
        native.machine["isa"] != emulated["isa_choices"])
