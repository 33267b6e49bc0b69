"""The int8 backends, the dispatch table and the CPU capabilities every choice reads."""

import copy
import pickle

import pytest
import torch

from optimum_int8.nn import kernels
from optimum_int8.nn.kernels import CpuCapabilities, KernelPlan, KernelUnavailableError, capabilities

AMX = CpuCapabilities(avx2=True, avx512=True, avx512_vnni=True, avx512_bf16=True, amx_int8=True, amx_bf16=True)
VNNI = CpuCapabilities(avx2=True, avx512=True, avx512_vnni=True)
VNNI_BF16 = CpuCapabilities(avx2=True, avx512=True, avx512_vnni=True, avx512_bf16=True)
AVX2 = CpuCapabilities(avx2=True)
HERE = capabilities.detect()


def _runnable(backend: str) -> str | None:
    return kernels.BACKENDS[backend].unavailable_reason(HERE)


BACKENDS_HERE = [
    pytest.param(name, marks=pytest.mark.skipif(_runnable(name) is not None, reason=f"{name}: {_runnable(name)}"))
    for name in kernels.BACKENDS
]


def _weights(out_features=48, in_features=40, seed=0):
    generator = torch.Generator().manual_seed(seed)
    weight_int8 = torch.randint(-127, 128, (out_features, in_features), generator=generator, dtype=torch.int8)
    weight_scale = torch.rand(out_features, generator=generator) / 100 + 1e-3
    return weight_int8, weight_scale, torch.randn(out_features, generator=generator)


def test_some_kernel_runs_on_this_cpu():
    kernels.check_available()
    assert HERE.avx2, "optimum-int8 targets x86 CPUs with AVX2"


def test_detected_capabilities_match_torchs_own_checks():
    assert HERE.amx_int8 == torch.cpu._is_amx_tile_supported()
    assert HERE.avx512_vnni == torch.cpu._is_vnni_supported()
    assert HERE.needs_reduce_range == (not HERE.avx512_vnni)


def test_capabilities_from_the_environment_and_unknown_flags(monkeypatch):
    monkeypatch.setenv(capabilities.CAPABILITIES_ENV, "avx2, avx512")
    assert capabilities.current() == CpuCapabilities(avx2=True, avx512=True)
    monkeypatch.setenv(capabilities.CAPABILITIES_ENV, "avx2,sse9")
    with pytest.raises(ValueError, match=r"OPTIMUM_INT8_CPU_CAPABILITIES.*sse9"):
        capabilities.current()
    with capabilities.overridden(AMX):
        assert capabilities.current() is AMX


@pytest.mark.parametrize(
    "cpu, expected",
    [
        (AMX, KernelPlan("onednn", False, "fbgemm", 32)),
        (VNNI, KernelPlan("fbgemm", False)),
        (VNNI_BF16, KernelPlan("fbgemm", False)),
        (AVX2, KernelPlan("fbgemm", True)),
    ],
    ids=["amx", "vnni", "vnni-bf16", "avx2"],
)
def test_auto_dispatch_per_cpu(cpu, expected):
    assert kernels.plan(capabilities=cpu) == expected


def test_amx_plan_picks_the_backend_by_rows():
    amx = kernels.plan(capabilities=AMX)
    assert [amx.backend_for(rows) for rows in (1, 4, 31, 32, 2048)] == ["fbgemm"] * 3 + ["onednn"] * 2


def test_forced_kernels_and_reduce_range(monkeypatch):
    assert kernels.plan("onednn", capabilities=VNNI) == KernelPlan("onednn", False)
    assert kernels.plan("fbgemm", reduce_range=True, capabilities=AMX) == KernelPlan("fbgemm", True)
    monkeypatch.setenv(kernels.KERNEL_ENV, "fbgemm")
    assert kernels.plan(capabilities=AMX) == KernelPlan("fbgemm", False)
    assert kernels.plan("onednn", capabilities=AMX).backend == "onednn"  # an explicit choice beats the variable
    monkeypatch.setenv(kernels.KERNEL_ENV, "cuda")
    with pytest.raises(ValueError, match="OPTIMUM_INT8_KERNEL"):
        kernels.plan(capabilities=AMX)


def test_forcing_a_kernel_the_cpu_cannot_run_names_the_kernel_and_flags():
    with pytest.raises(KernelUnavailableError, match=r"'onednn'.*VNNI.*\['avx2'\]"):
        kernels.plan("onednn", capabilities=AVX2)
    with pytest.raises(KernelUnavailableError, match="AVX2"):
        kernels.plan(capabilities=CpuCapabilities())


@pytest.mark.parametrize("backend", BACKENDS_HERE)
def test_pack_unpack_round_trip_is_exact(backend):
    weight_int8, weight_scale, bias = _weights()
    packed = kernels.BACKENDS[backend].pack(weight_int8, weight_scale, bias)
    unpacked_int8, unpacked_scale = kernels.BACKENDS[backend].unpack(packed)
    assert torch.equal(unpacked_int8, weight_int8)
    assert unpacked_scale.dtype == torch.float32 and torch.equal(unpacked_scale, weight_scale)


@pytest.mark.parametrize("reduce_range", [False, True], ids=["8-bit", "7-bit"])
@pytest.mark.parametrize("backend", BACKENDS_HERE)
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_linear_matches_float_reference_within_activation_rounding(backend, reduce_range, out_dtype):
    weight_int8, weight_scale, bias = _weights(16, 64, seed=1)
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(2))
    weight = weight_int8.float() * weight_scale[:, None]
    output = kernels.BACKENDS[backend].linear(
        x, kernels.BACKENDS[backend].pack(weight_int8, weight_scale, bias), reduce_range, out_dtype
    )
    assert output.dtype == out_dtype
    # Per-tensor activations over [min(x, 0), max(x, 0)]: step = range / 255 (8-bit) or / 127 (7-bit).
    reference = torch.nn.functional.linear(x, weight, bias)
    step = (x.max() - min(x.min(), 0)) / (127 if reduce_range else 255)
    bound = step / 2 * weight.abs().sum(dim=1) + 1e-4
    if out_dtype == torch.bfloat16:
        bound = bound + reference.abs() * 2**-8
    assert (output.float() - reference).abs().le(bound).all()


@pytest.mark.parametrize("backend", BACKENDS_HERE)
def test_backends_agree_with_each_other(backend):
    weight_int8, weight_scale, bias = _weights(64, 128, seed=3)
    x = torch.randn(3, 7, 128, generator=torch.Generator().manual_seed(4))
    outputs = {
        name: kernels.BACKENDS[name].linear(x, kernels.BACKENDS[name].pack(weight_int8, weight_scale, bias), False, torch.float32)
        for name in kernels.BACKENDS if _runnable(name) is None
    }
    reference = outputs["fbgemm"]
    assert outputs[backend].shape == (3, 7, 64)
    # Same 8-bit activation codes; the kernels may differ in how they round the requantized fp32 sums.
    assert torch.allclose(outputs[backend], reference, rtol=1e-5, atol=1e-5)


def test_onednn_refuses_nan_inputs_with_a_clear_error():
    if _runnable("onednn"):
        pytest.skip(_runnable("onednn"))
    weight_int8, weight_scale, bias = _weights(8, 16)
    packed = kernels.onednn.pack(weight_int8, weight_scale, bias)
    with pytest.raises(ValueError, match="NaN or Inf"):
        kernels.onednn.linear(torch.full((2, 16), float("nan")), packed, False, torch.float32)


def test_packed_weight_dispatches_by_rows_and_packs_the_short_backend_on_first_use():
    if _runnable("onednn") or _runnable("fbgemm"):
        pytest.skip("needs both the onednn and fbgemm backends")
    weight_int8, weight_scale, bias = _weights(24, 32, seed=5)
    packed = kernels.PackedInt8Weight(weight_int8, weight_scale, bias, KernelPlan("onednn", False, "fbgemm", 8))
    assert packed.backends() == ["onednn"]
    tall = torch.randn(8, 32, generator=torch.Generator().manual_seed(6))
    expected_tall = kernels.onednn.linear(tall, kernels.onednn.pack(weight_int8, weight_scale, bias), False, torch.float32)
    assert torch.equal(packed.linear(tall, torch.float32), expected_tall)
    assert packed.backends() == ["onednn"]
    short = tall[:3]
    expected_short = kernels.fbgemm.linear(short, kernels.fbgemm.pack(weight_int8, weight_scale, bias), False, torch.float32)
    assert torch.equal(packed.linear(short, torch.float32), expected_short)
    assert packed.backends() == ["onednn", "fbgemm"]
    assert packed.linear(torch.empty(0, 32), torch.bfloat16).shape == (0, 24)
    for clone in (copy.deepcopy(packed), pickle.loads(pickle.dumps(packed))):
        assert torch.equal(clone.unpack()[0], weight_int8) and clone.plan == packed.plan
        assert torch.equal(clone.linear(tall, torch.float32), expected_tall)


@pytest.mark.parametrize(
    "cpu, activations, expected",
    [
        (AMX, "per_token", KernelPlan("onednn", False, "fbgemm", 2, "per_token")),
        (VNNI, "per_token", KernelPlan("onednn", False, "fbgemm", 2, "per_token")),
        (AVX2, "per_token", KernelPlan("fbgemm", True, activations="per_token")),
        (VNNI, "static", KernelPlan("onednn", False, "fbgemm", 32, "static")),
        (AVX2, "static", KernelPlan("fbgemm", True, activations="static")),
    ],
    ids=["amx-per-token", "vnni-per-token", "avx2-per-token", "vnni-static", "avx2-static"],
)
def test_dispatch_per_activation_granularity(cpu, activations, expected):
    assert kernels.plan(capabilities=cpu, activations=activations) == expected


def test_no_kernel_for_a_granularity_is_a_clear_error():
    with pytest.raises(KernelUnavailableError, match="for per-token activations runs on this CPU"):
        kernels.plan(capabilities=CpuCapabilities(), activations="per_token")
    with pytest.raises(ValueError, match="activation granularity 'per_channel' is unknown"):
        kernels.plan(activations="per_channel")


def _per_token_reference(x, weight_int8, weight_scale, bias):
    low, high = x.amin(dim=1, keepdim=True).clamp(max=0), x.amax(dim=1, keepdim=True).clamp(min=0)
    scales = ((high - low) / 255).clamp(min=1e-12)
    zero_points = torch.round(-low / scales)
    codes = (torch.round(x / scales) + zero_points).clamp(0, 255) - zero_points
    return (codes @ weight_int8.float().t()) * scales * weight_scale + bias


@pytest.mark.parametrize("backend", BACKENDS_HERE)
@pytest.mark.parametrize("rows", [1, 5])
def test_per_token_gemms_quantize_each_row_with_its_own_scale(backend, rows):
    weight_int8, weight_scale, bias = _weights()
    x = torch.randn(rows, 40) * torch.logspace(-2, 2, rows)[:, None] + 0.5  # rows of very different magnitude and offset
    packed = kernels.BACKENDS[backend].pack(weight_int8, weight_scale, bias)
    output = kernels.BACKENDS[backend].linear_per_token(x, packed, torch.float32)
    reference = _per_token_reference(x, weight_int8, weight_scale, bias)
    assert torch.allclose(output, reference, rtol=1e-4, atol=1e-4 * reference.abs().max())
    assert kernels.BACKENDS[backend].linear_per_token(x.bfloat16(), packed, torch.bfloat16).dtype == torch.bfloat16


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_onednn_per_token_blocks_of_rows_give_the_one_call_results_exactly(monkeypatch, out_dtype):
    if _runnable("onednn"):
        pytest.skip(_runnable("onednn"))
    weight_int8, weight_scale, bias = _weights()
    x = (torch.randn(3, 23, 40) * torch.logspace(-2, 2, 23)[:, None] + 0.5).to(out_dtype)
    packed = kernels.onednn.pack(weight_int8, weight_scale, bias)
    whole = kernels.onednn.linear_per_token(x, packed, out_dtype)
    monkeypatch.setattr(kernels.onednn, "_FP32_BLOCK_BYTES", 4 * weight_int8.shape[0] * 5)  # blocks of 5 rows
    blocked = kernels.onednn.linear_per_token(x, packed, out_dtype)
    assert blocked.shape == whole.shape == (3, 23, weight_int8.shape[0]) and blocked.dtype == out_dtype
    assert torch.equal(blocked, whole)


@pytest.mark.parametrize("backend", BACKENDS_HERE)
def test_static_gemms_use_the_given_scale_and_clamp_outside_it(backend):
    weight_int8, weight_scale, bias = _weights()
    x = torch.randn(6, 40)
    x[0, 0] = 100.0  # outside the calibrated range: clamped to the largest code
    scale, zero_point = 0.02, 120
    codes = (torch.round(x / scale) + zero_point).clamp(0, 255) - zero_point
    reference = (codes * scale) @ (weight_int8.float() * weight_scale[:, None]).t() + bias
    packed = kernels.BACKENDS[backend].pack(weight_int8, weight_scale, bias)
    output = kernels.BACKENDS[backend].linear_static(x, packed, scale, zero_point, torch.float32)
    assert torch.allclose(output, reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("in_features, rows", [(40, 3), (64, 3), (64, kernels.weight_only.DEQUANTIZED_MIN_ROWS)],
                         ids=["odd-width", "kernel", "tall"])
def test_weight_only_gemm_multiplies_bf16_activations_by_exact_scales(in_features, rows):
    weight_int8, _, bias = _weights(in_features=in_features)
    scales = kernels.weight_only.bf16_representable_scales(torch.rand(48) / 100 + 1e-3)
    assert torch.equal(scales.bfloat16().float(), scales)
    x = torch.randn(rows, in_features)
    packed = kernels.weight_only.pack(weight_int8, scales)
    reference = x.bfloat16().float() @ (weight_int8.float() * scales[:, None]).t() + bias
    output = kernels.weight_only.linear(x, packed, bias, torch.float32)
    assert torch.allclose(output, reference, rtol=2e-2, atol=2e-2 * reference.abs().max())
    with pytest.raises(ValueError, match="must be bf16-representable"):
        kernels.weight_only.pack(weight_int8, scales + 1e-7)


@pytest.mark.parametrize("out_features", [48, 50], ids=["channels-in-streams", "uneven-streams"])
def test_weight_only_single_row_compiles_to_a_pass_over_the_weight_with_the_kernels_rounding(out_features):
    from torch._inductor.utils import run_and_get_code

    weight_int8, _, bias = _weights(out_features=out_features, in_features=64)
    packed = kernels.weight_only.pack(weight_int8, kernels.weight_only.bf16_representable_scales(
        torch.rand(out_features, generator=torch.Generator().manual_seed(1)) / 100 + 1e-3))
    weight = weight_int8.double() * packed.weight_scale.double()[:, None]
    torch._dynamo.reset()
    try:
        compiled = torch.compile(lambda x: kernels.weight_only.linear(x, packed, bias, torch.float32), dynamic=False)
        for rows, streamed in ((1, True), (3, False)):  # a decode step's row streams; more rows keep the kernel
            # bf16 values, as a bf16 model's activations are (inductor does not round an fp32 input to bf16 first).
            x = torch.randn(rows, 64, generator=torch.Generator().manual_seed(rows)).bfloat16().float()
            output, code = run_and_get_code(compiled, x)
            assert ("_weight_int8pack_mm" not in "".join(code)) == streamed
            # Every output is the fp32 sum of exact products rounded to bf16 once: within half a bf16 step.
            exact = (x.double() @ weight.t()).float()
            eager = kernels.weight_only.linear(x, packed, bias, torch.float32)
            for result in (output, eager):
                assert ((result - bias) - exact).abs().le(exact.abs() * 2**-8 + 1e-6).all()
    finally:
        torch._dynamo.reset()


def test_bf16_representable_scales_round_up_so_codes_stay_in_range():
    scales = torch.tensor([1.0001, 0.3, 1e-3, 7.77])
    rounded = kernels.weight_only.bf16_representable_scales(scales)
    assert (rounded >= scales).all() and torch.equal(rounded.bfloat16().float(), rounded)
