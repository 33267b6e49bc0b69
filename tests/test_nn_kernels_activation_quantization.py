"""Activation quantization for the oneDNN int8 GEMM: torch's own per-tensor quantizer, on bf16 inputs too."""

import pytest
import torch

from optimum_int8.nn.kernels import activation_quantization as aq


def _activation(dtype, shape=(2, 700, 1600), seed=0):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 3 + 0.5
    return x.to(dtype)


@pytest.mark.parametrize("qmax", [255, 127], ids=["8-bit", "7-bit"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_codes_are_torch_quantize_per_tensor_over_the_range_with_zero(dtype, qmax):
    x = _activation(dtype)  # 2240 000 elements: the bf16 path upcasts in several blocks
    codes, scale, zero_point = aq.quantize(x, qmax)
    low, high = min(x.min().item(), 0.0), max(x.max().item(), 0.0)
    assert scale == pytest.approx((high - low) / qmax) and 0 <= zero_point <= qmax
    assert codes.shape == x.shape and codes.dtype == torch.uint8 and int(codes.max()) <= qmax
    assert torch.equal(codes, torch.quantize_per_tensor(x.float(), scale, zero_point, torch.quint8).int_repr())
    assert ((codes.float() - zero_point) * scale - x.float()).abs().max() <= scale / 2 * 1.001


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_non_contiguous_inputs_give_the_codes_of_their_values(dtype):
    x = _activation(dtype, (64, 2, 96)).transpose(0, 1)
    codes, scale, zero_point = aq.quantize(x, 255)
    assert codes.shape == x.shape and codes.is_contiguous()
    assert torch.equal(codes, torch.quantize_per_tensor(x.float().contiguous(), scale, zero_point, torch.quint8).int_repr())


def test_an_all_zero_input_gets_a_usable_scale():
    codes, scale, zero_point = aq.quantize(torch.zeros(3, 8, dtype=torch.bfloat16), 255)
    assert scale == 1.0 and zero_point == 0 and not codes.any()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_and_inf_inputs_raise(bad):
    x = _activation(torch.bfloat16, (4, 16))
    x[1, 3] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        aq.quantize(x, 255)


def test_per_row_codes_scales_and_zero_points_and_the_single_row_shortcut_agree():
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(64, 48, generator=generator) * torch.logspace(-4, 3, 64)[:, None] + torch.randn(64, 1, generator=generator)
    rows[3] = rows[3].abs()  # a row without negative values: zero point 0
    codes, scales, zero_points = aq.quantize_per_row(rows)
    assert zero_points[3] == 0 and codes.dtype == torch.uint8
    dequantized = (codes.float() - zero_points[:, None]) * scales[:, None]
    assert ((dequantized - rows).abs() <= scales[:, None] * 0.5001 + 1e-6).all()
    for row, scale, zero_point in zip(rows, scales, zero_points):
        assert aq.single_row_qparams(row[None]) == (float(scale), int(zero_point))
    with pytest.raises(ValueError, match="NaN or Inf"):
        aq.single_row_qparams(torch.tensor([[1.0, float("nan")]]))


def test_per_row_codes_of_a_bf16_input_are_those_of_its_exact_fp32_upcast():
    x = _activation(torch.bfloat16, shape=(3, 50, 96))
    for got, expected in zip(aq.quantize_per_row(x), aq.quantize_per_row(x.float())):
        assert torch.equal(got, expected)
    assert aq.quantize_per_row(x)[0].shape == (150, 96)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_static_codes_with_an_input_multiplier_are_those_of_the_multiplied_input(dtype):
    generator = torch.Generator().manual_seed(0)
    x = (torch.randn(3, 100, 4096, generator=generator) * 4).to(dtype)  # several blocks of rows
    multiplier = (torch.rand(4096, generator=generator) * 2 + 0.1).to(dtype)
    codes = aq.quantize_with(x, 0.05, 128, input_multiplier=multiplier)
    assert codes.shape == x.shape and codes.dtype == torch.uint8
    assert torch.equal(codes, aq.quantize_with(x * multiplier, 0.05, 128))


def test_per_row_codes_are_the_same_in_blocks_of_rows_as_in_one_pass():
    x = _activation(torch.bfloat16, shape=(2, 300, 4096))  # several blocks of rows
    codes, scales, zero_points = aq.quantize_per_row(x)
    rows = x.reshape(-1, 4096).float()
    expected_scales, expected_zero_points = aq.row_qparams(rows)
    shifted = torch.addcmul(expected_zero_points[:, None], rows, torch.reciprocal(expected_scales)[:, None])
    expected_codes = torch.quantize_per_tensor(shifted, 1.0, 0, torch.quint8).int_repr()
    assert torch.equal(scales, expected_scales) and torch.equal(zero_points, expected_zero_points)
    assert torch.equal(codes, expected_codes)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_per_row_codes_with_an_input_multiplier_are_those_of_the_multiplied_input(dtype):
    x = _activation(dtype, shape=(2, 300, 4096))
    multiplier = (torch.rand(4096, generator=torch.Generator().manual_seed(1)) * 2 + 0.1).to(dtype)
    for got, expected in zip(aq.quantize_per_row(x, multiplier), aq.quantize_per_row(x * multiplier)):
        assert torch.equal(got, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_traceable_static_codes_are_those_of_quantize_with_up_to_ties_and_bf16_rounding(dtype):
    generator = torch.Generator().manual_seed(0)
    x = (torch.randn(8, 64, 512, generator=generator) * 4).to(dtype)
    multiplier = (torch.rand(512, generator=generator) * 2 + 0.1).to(dtype)
    expected = aq.quantize_with(x, 0.0123, 128, input_multiplier=multiplier)
    assert torch.equal(aq.quantize_traceable(x, 0.0123, 128, multiplier), expected)
    compiled = torch.compile(aq.quantize_traceable, dynamic=False)(x, 0.0123, 128, multiplier)
    assert compiled.shape == x.shape and compiled.dtype == torch.uint8
    differences = compiled.int() - expected.int()
    # Inductor keeps a bf16 product in fp32 where eager rounds it to bf16 first: then one code apart at most.
    assert differences.abs().max() <= 1
    assert (differences != 0).float().mean() < (1e-4 if dtype == torch.float32 else 0.05)
