"""The integer-only ops (nn/integer_ops.py) against their float counterparts, with the paper's error bounds."""

import math

import pytest
import torch

from optimum_int8.nn import integer_ops as ops

GENERATOR_SEED = 0


def _generator():
    return torch.Generator().manual_seed(GENERATOR_SEED)


def test_dyadic_requantize_rounds_like_float_and_saturates():
    generator = _generator()
    x = torch.randint(-(2**24), 2**24, (64, 48), generator=generator, dtype=torch.int32)
    ratio = torch.rand(48, generator=generator, dtype=torch.float64) * 2e-5 + 1e-7
    shift = ops.dyadic_shift(float(ratio.max()), 2**24)
    bias = torch.randn(48, generator=generator, dtype=torch.float64) * 10
    out = ops.requantize(x, ops.dyadic(ratio, shift), ops.rounding_offset(shift, bias), ops.as_constant(shift), 8)
    expected = torch.round(x.double() * ratio + bias).clamp(-128, 127)
    assert out.dtype == torch.int8
    assert (out.double() - expected).abs().max() <= 1
    assert (out.double() == expected).double().mean() > 0.99
    saturated = ops.requantize(torch.tensor([2**30, -(2**30)]), ops.dyadic(1.0, 20), ops.rounding_offset(20), ops.as_constant(20), 8)
    assert saturated.tolist() == [127, -128]


def test_dyadic_shift_keeps_products_inside_int64():
    for ratio, bound in [(3e-9, 2**31), (0.7, 128), (2.0**14, 128), (1e-30, 2**20)]:
        shift = ops.dyadic_shift(ratio, bound)
        multiplier = int(ops.dyadic(ratio, shift))
        assert 1 <= shift <= 62
        assert abs(multiplier) * bound <= 2**62
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="scale ratio"):
            ops.dyadic_shift(bad, 128)


def test_requantize_sum_adds_terms_of_different_scales():
    generator = _generator()
    accumulator = torch.randint(-(2**21), 2**21, (8, 16), generator=generator, dtype=torch.int32)
    residual = torch.randint(-128, 128, (8, 16), generator=generator, dtype=torch.int8)
    accumulator_ratio, residual_ratio = 0.37, 2.0**12 + 0.5
    shift = min(ops.dyadic_shift(accumulator_ratio, 2**21, terms=2), ops.dyadic_shift(residual_ratio, 128, terms=2))
    terms = ((accumulator, ops.dyadic(accumulator_ratio, shift)), (residual, ops.dyadic(residual_ratio, shift)))
    out = ops.requantize_sum(terms, ops.rounding_offset(shift), ops.as_constant(shift), 22)
    expected = torch.round(accumulator.double() * accumulator_ratio + residual.double() * residual_ratio)
    assert out.dtype == torch.int32
    assert (out.double() - expected).abs().max() <= 1


def _i_exp(x: torch.Tensor, constants: dict) -> torch.Tensor:
    """The 16-bit exp that integer_softmax computes (scores already minus the row max)."""
    x = torch.maximum(x, constants["x0"] * ops.EXP_MAX_HALVINGS)
    q = (-x * constants["reciprocal"]) >> constants["reciprocal_shift"]
    r = x - constants["x0"] * q
    poly = (r + constants["b"]) * r + constants["c"]
    return ops.rounding_shift(poly * constants["multiplier"], constants["shift"] + q)


@pytest.mark.parametrize("score_scale, bound", [(3e-3, 2.3e-3), (1e-3, 1.95e-3), (1e-4, 1.95e-3), (2e-6, 1.95e-3)])
def test_i_exp_is_within_the_polynomial_error_of_exp(score_scale, bound):
    constants = ops.softmax_constants(score_scale, 1 / 32767)
    x = torch.arange(int(-12 / score_scale), 1, max(1, int(1e-3 / score_scale)), dtype=torch.int64)
    approximation = _i_exp(x, constants).double() / 32767
    # The second-order polynomial on (-ln 2, 0] is within 1.92e-3 of exp (Algorithm 3); 16-bit rounding adds
    # 2e-5, and coarse score scales round ln 2 and the coefficients to a coarse integer grid.
    assert (approximation - torch.exp(x.double() * score_scale)).abs().max() < bound


def test_i_exp_floor_division_by_multiply_shift_is_exact():
    for score_scale in (1e-2, 3.3e-4, 1e-6, 2.5e-8):
        constants = ops.softmax_constants(score_scale, 1 / 32767)
        x0 = int(constants["x0"])
        multiples = torch.arange(ops.EXP_MAX_HALVINGS + 1, dtype=torch.int64) * x0
        edges = torch.cat([multiples - 1, multiples, multiples + 1]).clamp(ops.EXP_MAX_HALVINGS * x0, 0)
        random = torch.randint(ops.EXP_MAX_HALVINGS * x0, 1, (100_000,), generator=_generator())
        x = torch.cat([edges, random])
        q = (-x * constants["reciprocal"]) >> constants["reciprocal_shift"]
        assert torch.equal(q, torch.div(x, x0, rounding_mode="floor"))


@pytest.mark.parametrize("score_scale", [1e-2, 3.3e-4, 2e-4])
def test_the_exp_table_gives_the_i_exp_of_every_score_difference(score_scale):
    constants = ops.softmax_constants(score_scale, 1 / 32767)
    table = ops.exp_table(constants)
    x0 = -int(constants["x0"])
    # Every difference to the row maximum up to past the 30-halvings clamp, and the masked score's.
    x = torch.cat([-torch.arange((ops.EXP_MAX_HALVINGS + 2) * x0), torch.tensor([ops.MASKED_SCORE])])
    last = table.numel() - 1
    assert torch.equal(table.long()[(-x).clamp(max=last)], ops.integer_exp(x, **constants))
    assert table[-1] == 0 and table[0] == 32767  # past 16 halvings a 16-bit exp of at most 2**15 rounds to 0


def test_the_exp_table_is_left_out_past_its_size_limit():
    assert ops.exp_table(ops.softmax_constants(5e-6, 1 / 32767)) is None  # 16 x 138,629 entries


def _softmax_inputs(score_scale: float, shape=(4, 3, 10, 10)):
    logits = torch.randn(shape, generator=_generator(), dtype=torch.float64) * 4
    scores = torch.round(logits / score_scale).to(torch.int32)
    return scores, scores.double() * score_scale


def _integer_softmax(scores, keep, constants):
    return ops.integer_softmax(
        scores, keep, constants["x0"], constants["reciprocal"], constants["reciprocal_shift"], constants["b"],
        constants["c"], constants["multiplier"], constants["shift"],
    )


@pytest.mark.parametrize("score_scale", [1e-3, 1e-5])
def test_integer_softmax_matches_softmax(score_scale):
    scores, logits = _softmax_inputs(score_scale)
    probabilities = _integer_softmax(scores, None, ops.softmax_constants(score_scale, 1 / 32767))
    assert probabilities.dtype == torch.int16
    error = (probabilities.double() / 2**ops.SOFTMAX_BITS - torch.softmax(logits, dim=-1)).abs().max()
    # One 8-bit output step (the normalization floors) plus the relative error of i-exp.
    assert error < 1 / 2**ops.SOFTMAX_BITS + 2e-3
    assert probabilities.sum(-1).max() <= 2**ops.SOFTMAX_BITS


def test_integer_softmax_masks_keys():
    scores, logits = _softmax_inputs(1e-3)
    keep = torch.ones(4, 1, 1, 10, dtype=torch.bool)
    keep[0, ..., 6:] = False
    keep[1] = False  # a fully masked row spreads evenly, as float softmax of equal scores does
    probabilities = _integer_softmax(scores, keep, ops.softmax_constants(1e-3, 1 / 32767))
    assert probabilities[0, ..., 6:].abs().sum() == 0
    expected = torch.softmax(logits[0, ..., :6], dim=-1)
    assert (probabilities[0, ..., :6].double() / 256 - expected).abs().max() < 1 / 256 + 2e-3
    assert probabilities[1].min() == probabilities[1].max()


def test_i_gelu_matches_the_papers_error():
    input_scale = torch.full((3,), 1e-4, dtype=torch.float64)
    constants, output_scale, _ = ops.gelu_constants(input_scale, 2**20)
    x = torch.arange(-40_000, 40_001, dtype=torch.int64)[:, None].expand(-1, 3)
    approximation = ops.integer_gelu(x, **constants).double() * output_scale
    error = approximation - torch.nn.functional.gelu(x.double() * 1e-4)
    # I-BERT's Table 1 reports i-GELU's distance to GELU on [-4, 4] as L2 0.0082, L-inf 0.018.
    assert error.pow(2).mean().sqrt() < 0.0083
    assert error.abs().max() < 0.0185


@pytest.mark.parametrize("input_scale", [3e-2, 1e-6])
def test_i_gelu_precision_does_not_depend_on_the_input_scale(input_scale):
    constants, output_scale, bound = ops.gelu_constants(torch.tensor([input_scale], dtype=torch.float64), 2**31)
    x = torch.round(torch.linspace(-4, 4, 2001, dtype=torch.float64) / input_scale).to(torch.int64)[:, None]
    approximation = ops.integer_gelu(x, **constants)
    assert approximation.abs().max() <= bound
    error = approximation.double() * output_scale - torch.nn.functional.gelu(x.double() * input_scale)
    assert error.abs().max() < 0.02


def test_bit_length_and_integer_sqrt_are_exact():
    generator = _generator()
    values = torch.cat([
        torch.arange(0, 5000, dtype=torch.int64),
        torch.randint(0, 2**62, (5000,), generator=generator, dtype=torch.int64),
        torch.tensor([2**62, 2**62 - 1, 2**63 - 1], dtype=torch.int64),
    ])
    squares = torch.arange(1, 3_037_000_499, 9_999_991, dtype=torch.int64) ** 2
    values = torch.cat([values, squares, squares - 1, squares + 1])
    assert ops.bit_length(values).tolist() == [int(v).bit_length() for v in values]
    assert ops.integer_sqrt(values).tolist() == [math.isqrt(int(v)) for v in values]


def test_integer_layernorm_matches_layer_norm():
    generator = _generator()
    x = torch.randint(-(2**21), 2**21, (32, 384), generator=generator, dtype=torch.int32)
    x[0] = 7  # a constant row normalizes to 0 instead of dividing by zero
    normalized = ops.integer_layernorm(x)
    assert normalized.abs().max() <= 2**ops.LAYERNORM_BITS
    value = normalized.double() * math.sqrt(384) / 2**ops.LAYERNORM_BITS
    expected = torch.nn.functional.layer_norm(x.double(), (384,), eps=0.0)
    assert value[0].abs().max() == 0
    assert (value[1:] - expected[1:]).abs().max() < 1e-5

    weight = torch.randn(384, generator=generator) * 0.5
    weight[:4] = 0.0
    bias = torch.randn(384, generator=generator) * 0.2
    output_scale = 0.04
    affine = ops.layernorm_affine_constants(weight, bias, output_scale)
    out = ops.requantize(normalized, affine["multiplier"], affine["offset"], affine["shift"], 8)
    reference = torch.round((expected * weight.double() + bias.double()) / output_scale).clamp(-128, 127)
    assert (out[1:].double() - reference[1:]).abs().max() <= 1
