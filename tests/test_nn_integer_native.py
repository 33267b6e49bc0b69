"""The native row-fused integer stages (nn/integer_native.py): the reference's integers for every stage, input and
mask, and a build that is cached, atomic and reports why it failed."""

import pytest
import torch

from optimum_int8.nn import integer_native
from optimum_int8.nn import integer_ops as ops
from optimum_int8.nn.integer_layers import IntegerEncoderLayer
from optimum_int8.nn.kernels.capabilities import CpuCapabilities, detect, overridden
from integer_layer import integer_bert_layer

HIDDEN, HEADS, FFN = 64, 4, 128

pytestmark = pytest.mark.skipif(integer_native.load() is None, reason=f"no native kernels: {integer_native.unavailable_reason()}")


def _prepared_layer(hidden: int = HIDDEN, heads: int = HEADS) -> IntegerEncoderLayer:
    _, layer, scales, _ = integer_bert_layer(hidden, heads, FFN, batches=2)
    layer.prepare(scales["embeddings"]["output"])
    return layer


def _masks(batch: int, length: int, heads: int = HEADS) -> dict:
    generator = torch.Generator().manual_seed(3)
    padding = torch.ones(batch, 1, 1, length, dtype=torch.bool)
    padding[0, ..., length // 3:] = False
    padding[1] = False  # a sequence with every key masked: the reference's uniform row
    causal = torch.ones(length, length, dtype=torch.bool).tril().expand(batch, 1, length, length)
    per_head = torch.rand(batch, heads, length, length, generator=generator) > 0.3
    shared = causal[:1]  # one mask broadcast over the batch
    return {"none": None, "padding": padding, "causal": causal, "shared": shared, "per head": per_head}


@pytest.mark.parametrize("kernel", ["onednn", "torch._int_mm"])
@pytest.mark.parametrize("attention", ["fused", "whole batch", "two sequences", "one head", "three heads"])
@pytest.mark.parametrize("heads", [4, 2], ids=["head size 16", "head size 64"])
@pytest.mark.parametrize("exp", ["table", "arithmetic"])
def test_a_layer_on_native_stages_gives_the_reference_integers(kernel, attention, heads, exp, monkeypatch):
    length, hidden = 21, 16 * 16 // heads
    # These tiny layers' scales need an i-exp table of about 2 million entries, past the default limit.
    monkeypatch.setattr(ops, "EXP_TABLE_ENTRIES", 2**22 if exp == "table" else 0)
    if attention == "fused":
        if not integer_native.load().fused_attention_available():
            pytest.skip("fused attention needs AVX-512 VNNI")
    else:  # the fp32 products around the native softmax, in chunks of this many scores
        monkeypatch.setattr(integer_native, "FUSED_HEAD_SIZES", ())
        monkeypatch.setattr(integer_native, "ATTENTION_CHUNK_SCORES", {
            "whole batch": integer_native.ATTENTION_CHUNK_SCORES, "two sequences": 2 * heads * length * length,
            "one head": length * length, "three heads": 3 * length * length}[attention])
    if kernel == "torch._int_mm":  # int32 accumulators instead of oneDNN's exact fp32
        with overridden(CpuCapabilities(avx2=True, avx512=True)):
            layer = _prepared_layer(hidden, heads)
    else:
        layer = _prepared_layer(hidden, heads)
    assert layer.attention.self.qkv.kernel == kernel or detect().avx512_vnni is False
    assert (layer.attention.self.softmax_exp_table is not None) == (exp == "table")
    generator = torch.Generator().manual_seed(2)
    codes = torch.randint(-128, 128, (3, length, hidden), dtype=torch.int8, generator=generator)
    with torch.no_grad():
        for name, keep in _masks(3, length, heads).items():
            native, reference = layer(codes, keep, native=True), layer(codes, keep, native=False)
            assert native.dtype == reference.dtype == torch.int8
            assert torch.equal(native, reference), name


@pytest.mark.parametrize("score_scale", [2e-4, 5e-6], ids=["table", "arithmetic"])
def test_softmax_matches_the_reference_over_the_whole_score_range(score_scale):
    constants = ops.softmax_constants(score_scale, 1 / 32767)
    table = ops.exp_table(constants)
    assert (table is not None) == (score_scale == 2e-4)  # 16 halvings of |x0| = 3466 fit the default table; 138,629 not
    x0 = -int(constants["x0"])
    generator = torch.Generator().manual_seed(4)
    bound = 64 * 128 * 128  # |Q.K^T| for int8 codes and head size 64
    wide = torch.randint(-bound, bound + 1, (2, HEADS, 33, 33), generator=generator)
    # Within the table's span below the row maximum, and past it up to the 30-halvings clamp.
    near = bound - torch.randint(0, 32 * x0, (2, HEADS, 33, 33), generator=generator)
    for scores in (wide.to(torch.float32), near.to(torch.float32)):
        scores[0, 0, 0] = scores[0, 0, 0].max()  # ties at the row maximum
        scores[1, 1, 2] = scores[1, 1, 2, 0]
        for keep in _masks(2, 33).values():
            native = integer_native.integer_softmax(scores, keep, torch.stack(list(constants.values())), table)
            assert torch.equal(native, ops.integer_softmax(scores, keep, **constants).to(torch.float32))


def test_gelu_and_layernorm_stages_saturate_like_the_reference():
    layer = _prepared_layer()
    generator = torch.Generator().manual_seed(5)
    intermediate = layer.intermediate
    bound = intermediate.dense.accumulator_bound
    for dtype in (torch.float32, torch.int32):  # accumulators of either GEMM kernel, up to their largest magnitude
        accumulator = torch.randint(-bound, bound + 1, (40, FFN), generator=generator).to(dtype)
        accumulator[0], accumulator[1] = bound, -bound
        native = integer_native.gelu_codes(
            accumulator, intermediate.bias_int, intermediate.gelu_b, intermediate.gelu_c, intermediate.gelu_one,
            intermediate.gelu_erf_shift, intermediate.multiplier, int(intermediate.offset), int(intermediate.shift),
        )
        gelu = ops.integer_gelu(accumulator.to(ops.WIDE) + intermediate.bias_int, intermediate.gelu_b,
                                intermediate.gelu_c, intermediate.gelu_one, intermediate.gelu_erf_shift)
        assert torch.equal(native, ops.requantize(gelu, intermediate.multiplier, intermediate.offset, intermediate.shift, 8))

        output = layer.output
        accumulator = torch.randint(-output.dense.accumulator_bound, output.dense.accumulator_bound + 1, (40, HIDDEN),
                                    generator=generator).to(dtype)
        residual = torch.randint(-128, 128, (40, HIDDEN), dtype=torch.int8, generator=generator)
        residual[3] = 7  # a constant row: zero variance
        accumulator[3] = 0
        terms = [(accumulator, output.dense_multiplier), (residual, output.residual_multiplier)]
        native = output.LayerNorm.after_sum(terms, output.offset, output.shift, 22, native=True)
        assert torch.equal(native, output.LayerNorm.after_sum(terms, output.offset, output.shift, 22, native=False))


def test_the_profiler_sees_each_native_stage_under_its_own_name():
    from optimum_int8.benchmark.profiling import category

    layer = _prepared_layer()
    codes = torch.randint(-128, 128, (2, 9, HIDDEN), dtype=torch.int8)
    with torch.no_grad(), torch.profiler.profile() as profiler:
        layer(codes, None, native=True)
    stages = {e.key for e in profiler.key_averages() if e.key.startswith(integer_native.PROFILER_PREFIX)}
    attention = ("qkv_codes", "fused_attention") if integer_native.load().fused_attention_available() else (
        "qkv_heads", "softmax", "context_codes")
    assert stages == {integer_native.PROFILER_PREFIX + s for s in (*attention, "residual_layernorm", "gelu_codes")}
    assert {category(stage) for stage in stages} == {"integer stages (native)"}


def test_the_stages_run_on_torchs_thread_count_from_any_python_thread():
    import threading

    layer = _prepared_layer()
    codes = torch.randint(-128, 128, (2, 9, HIDDEN), dtype=torch.int8)
    previous = torch.get_num_threads()
    results = {}
    try:
        for threads in (1, previous):
            torch.set_num_threads(threads)
            with torch.no_grad():
                results[threads] = layer(codes, None, native=True)
            assert integer_native._Library.threads == threads
        worker = threading.Thread(target=lambda: results.setdefault("worker", layer(codes, None, native=True)))
        worker.start()
        worker.join()
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(results[1], results[previous]) and torch.equal(results["worker"], results[1])


@pytest.fixture
def fresh_library(tmp_path, monkeypatch):
    """An empty kernel cache and no library loaded; the process's own library is loaded again afterwards."""
    monkeypatch.setenv(integer_native.CACHE_ENV, str(tmp_path))
    integer_native.forget()
    yield tmp_path
    monkeypatch.undo()
    integer_native.forget()
    integer_native.load()


def test_the_build_is_cached_by_source_and_flags_and_loaded_again_without_compiling(fresh_library, monkeypatch):
    assert integer_native.load() is not None and integer_native.unavailable_reason() is None
    built = integer_native.library_path()
    assert built.parent == fresh_library and built.suffix == ".so"
    assert [p.name for p in fresh_library.iterdir()] == [built.name]  # no scratch files left

    def no_compiler(command, **options):
        raise OSError(f"compiler called: {command[0]}")

    monkeypatch.setattr(integer_native.subprocess, "run", no_compiler)
    integer_native.forget()
    assert integer_native.load() is not None and integer_native.library_path() == built  # found, not compiled
    integer_native.forget()
    monkeypatch.setattr(integer_native, "vector_flags", lambda: [])  # other flags: another library to build
    assert integer_native.load() is None and "compiler called" in integer_native.unavailable_reason()


def test_a_failing_compiler_is_reported_and_leaves_nothing_behind(fresh_library, monkeypatch, tmp_path_factory):
    failing = tmp_path_factory.mktemp("bin") / "failing-cxx"
    failing.write_text("#!/bin/sh\necho 'internal compiler error: out of luck' >&2\nexit 1\n")
    failing.chmod(0o755)
    monkeypatch.setenv("CXX", str(failing))
    assert integer_native.load() is None
    reason = integer_native.unavailable_reason()
    assert "failing-cxx failed on integer_native.cpp" in reason and "out of luck" in reason
    assert list(fresh_library.iterdir()) == []


def test_the_vector_flags_follow_the_detected_cpu_not_a_faked_one():
    with overridden(CpuCapabilities(avx2=True, avx512=True, avx512_vnni=True, amx_int8=True)):
        flags = integer_native.vector_flags()
    assert ("-mavx512f" in flags) == detect().avx512 and ("-mavx2" in flags) == detect().avx2
