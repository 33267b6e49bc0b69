"""GELU fused into oneDNN's static int8 GEMM in compiled graphs (nn/kernels/compiled_fusions.py)."""

import re

import pytest
import torch
from torch._inductor.utils import run_and_get_code

from optimum_int8.nn.kernels import capabilities, onednn

pytestmark = pytest.mark.skipif(onednn.unavailable_reason(capabilities.detect()) is not None,
                                reason="oneDNN's int8 GEMM needs AVX-512 VNNI or AMX")
SCALE, ZERO_POINT = 0.02, 128


@pytest.fixture
def packed():
    generator = torch.Generator().manual_seed(0)
    weight_int8 = torch.randint(-127, 128, (96, 64), generator=generator, dtype=torch.int8)
    return onednn.pack(weight_int8, torch.rand(96, generator=generator) / 200, torch.randn(96, generator=generator))


def _gemm_calls(code: str) -> list[str]:
    return re.findall(r"onednn_qlinear\.default\([^\n]*", code)


def _computes_erf(code: str) -> bool:
    return re.search(r"(\.|std::)erf\(", code) is not None


def _compiled(function, x):
    torch._dynamo.reset()  # the pattern applies when inductor compiles, not to a cached graph of another test
    try:
        output, code = run_and_get_code(torch.compile(function, dynamic=False), x)
    finally:
        torch._dynamo.reset()
    return output, "".join(code)


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_erf_gelu_after_a_static_gemm_runs_inside_the_gemm(packed, out_dtype):
    def ffn_up(x):
        return torch.nn.functional.gelu(onednn.linear_static(x, packed, SCALE, ZERO_POINT, out_dtype))

    x = torch.randn(2, 40, 64, generator=torch.Generator().manual_seed(1)).to(out_dtype)
    output, code = _compiled(ffn_up, x)
    calls = _gemm_calls(code)
    assert calls and all("gelu" in call for call in calls)
    assert not _computes_erf(code)
    expected = ffn_up(x).float()
    # oneDNN's GELU on the fp32 result against eager GELU on the (bf16) output: the same up to rounding.
    tolerance = 1e-4 if out_dtype == torch.float32 else 2e-2
    assert output.dtype == out_dtype and output.shape == expected.shape
    assert (output.float() - expected).abs().max() <= tolerance * expected.abs().max()


def test_gelu_stays_apart_where_the_gemm_output_has_another_user_or_gelu_is_tanh(packed):
    def residual(x):
        y = onednn.linear_static(x, packed, SCALE, ZERO_POINT, torch.float32)
        return torch.nn.functional.gelu(y) + y

    def tanh_gelu(x):
        return torch.nn.functional.gelu(onednn.linear_static(x, packed, SCALE, ZERO_POINT, torch.float32),
                                        approximate="tanh")

    x = torch.randn(2, 40, 64, generator=torch.Generator().manual_seed(2))
    for function in (residual, tanh_gelu):
        output, code = _compiled(function, x)
        calls = _gemm_calls(code)
        assert calls and not any("gelu" in call for call in calls)  # no post-op: GELU computed after the GEMM
        assert torch.allclose(output, function(x), rtol=1e-4, atol=1e-4)
