"""Activation quantization for the oneDNN int8 GEMM: the compiled path agrees with eager and falls back to it."""

import warnings

import pytest
import torch

from optimum_int8.nn.kernels import activation_quantization as aq

LARGE = (2, 256, 160)  # past COMPILE_MIN_ELEMENTS
assert LARGE[0] * LARGE[1] * LARGE[2] >= aq.COMPILE_MIN_ELEMENTS


def _activation(dtype, shape=LARGE, seed=0):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 3 + 0.5
    return x.to(dtype)


def _dequantize(codes, scale, zero_point):
    return (codes.float() - float(zero_point)) * float(scale)


@pytest.mark.parametrize("qmax", [255, 127], ids=["8-bit", "7-bit"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_eager_codes_are_torch_quantize_per_tensor(dtype, qmax):
    x = _activation(dtype)
    codes, scale, zero_point = aq.quantize_eager(x, qmax)
    low, high = min(x.min().item(), 0.0), max(x.max().item(), 0.0)
    assert scale == pytest.approx((high - low) / qmax) and codes.shape == x.shape and codes.dtype == torch.uint8
    expected = torch.quantize_per_tensor(x.float(), scale, zero_point, torch.quint8).int_repr()
    assert torch.equal(codes, expected) and int(codes.max()) <= qmax


@pytest.mark.parametrize("qmax", [255, 127], ids=["8-bit", "7-bit"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_compiled_quantization_agrees_with_eager(dtype, qmax, monkeypatch):
    monkeypatch.setenv(aq.COMPILE_ENV, "1")
    x = _activation(dtype)
    codes, scale, zero_point = aq.quantize(x, qmax)
    if not isinstance(scale, torch.Tensor):
        pytest.skip("torch.compile is unavailable here; the eager path ran (tested above)")
    eager_codes, eager_scale, eager_zero_point = aq.quantize_eager(x, qmax)
    assert codes.shape == x.shape and codes.dtype == torch.uint8
    assert scale.item() == pytest.approx(eager_scale, rel=1e-6) and int(zero_point) == eager_zero_point
    # x / scale (compiled) and x * (1 / scale) (torch's quantizer) may round a tie differently: one code apart.
    assert (codes.int() - eager_codes.int()).abs().max() <= 1
    error = (_dequantize(codes, scale, zero_point) - x.float()).abs().max()
    assert error <= scale.item() / 2 * 1.001


def test_small_inputs_and_disabled_compilation_run_eager(monkeypatch):
    small = _activation(torch.bfloat16, (3, 64))
    assert isinstance(aq.quantize(small, 255)[1], float)
    monkeypatch.setenv(aq.COMPILE_ENV, "0")
    assert isinstance(aq.quantize(_activation(torch.bfloat16), 255)[1], float)


def test_a_failing_compiler_warns_once_and_falls_back_to_eager(monkeypatch):
    def broken_compile(function, **kwargs):
        def run(*args):
            raise RuntimeError("no C++ compiler found")
        return run

    monkeypatch.setattr(aq, "_compiled", aq._Compiled())
    monkeypatch.setattr(torch, "compile", broken_compile)
    monkeypatch.setenv(aq.COMPILE_ENV, "1")
    x = _activation(torch.float32)
    with pytest.warns(RuntimeWarning, match="could not compile its activation quantizer.*no C\\+\\+ compiler"):
        codes, scale, zero_point = aq.quantize(x, 255)
    assert torch.equal(codes, aq.quantize_eager(x, 255)[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        aq.quantize(x, 255)


@pytest.mark.parametrize("compile_setting", ["1", "0"])
def test_nan_activations_raise_on_both_paths(compile_setting, monkeypatch):
    monkeypatch.setenv(aq.COMPILE_ENV, compile_setting)
    x = _activation(torch.float32)
    x[0, 3, 7] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        aq.quantize(x, 255)
