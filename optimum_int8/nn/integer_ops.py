"""I-BERT's integer-only arithmetic (Kim et al., 2021, arXiv:2101.01321) on integer torch tensors.

Run-time functions take and return integer tensors and use only integer add, multiply, shift, compare and
floor division, so their results are exact and identical in eager mode and under ``torch.compile``. The
``*_constants`` functions turn static float scales into the integer constants the run-time functions use;
they run once, when a model is converted or loaded. Wide intermediates are int64, and every constant is
chosen so that no product exceeds 2**62 for inputs in the stated range.

Constants are tensors (0-d for scalars) so that one compiled graph serves every layer.
"""

import math

import torch

WIDE = torch.int64
PRODUCT_BOUND = 2**62

# i-exp (Algorithm 3): exp(r) ~ a r^2 + b r + c on (-ln 2, 0], then exp(x) = exp(r) >> q for x = r - q ln 2.
EXP_POLY = (0.35815147, 0.96963238, 1.0)
LN2 = 0.6931
EXP_MAX_HALVINGS = 30
MASKED_SCORE = -(2**40)
EXP_BITS = 16
SOFTMAX_SUM_BITS = 32
SOFTMAX_BITS = 8
# i-GELU (Algorithm 2): erf(x) ~ sign(x) [a (min(|x|, -b) + b)^2 + 1] with a, b below, on x / sqrt(2).
ERF_POLY = (-0.2888, -1.769)
SQRT2 = 1.4142
ERF_BITS = 16
# i-sqrt LayerNorm (Algorithm 4): the normalized output has scale sqrt(n) / 2**LAYERNORM_BITS.
LAYERNORM_BITS = 30
LAYERNORM_FACTOR_BITS = 61


def integer_range(bits: int) -> tuple[int, int]:
    """Signed ``bits``-bit range."""
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def activation_scale(max_abs: float, bits: int) -> float:
    """Symmetric scale that maps [-max_abs, max_abs] onto ``bits``-bit integers (I-BERT's ``QuantAct``)."""
    return max(float(max_abs), 1e-8) / (2 ** (bits - 1) - 1)


def storage_dtype(bits: int) -> torch.dtype:
    """The narrowest integer dtype that holds signed ``bits``-bit values."""
    return torch.int8 if bits <= 8 else torch.int16 if bits <= 16 else torch.int32


def dyadic_shift(max_ratio: float, input_bound: int, terms: int = 1) -> int:
    """The largest shift ``s`` (at most 62) such that ``round(max_ratio * 2**s)`` times any input up to
    ``input_bound`` stays below 2**62 / terms.

    A real multiplier ``r`` then becomes the dyadic number ``round(r * 2**s) / 2**s`` (Section 3.2 of the
    paper), as precise as int64 arithmetic allows for that input range. ``terms`` products of that size
    plus a ``rounding_offset`` still fit in int64.
    """
    if not (max_ratio > 0 and math.isfinite(max_ratio)):
        raise ValueError(f"cannot requantize with scale ratio {max_ratio!r}; scales must be positive and finite.")
    limit = PRODUCT_BOUND // terms // max(int(input_bound), 1)
    shift = min(math.floor(math.log2(limit / max_ratio)), 62)
    while round(max_ratio * 2.0**shift) > limit:
        shift -= 1
    if shift < 1:
        raise ValueError(
            f"scale ratio {max_ratio:.3g} is too large for a dyadic requantization of inputs up to {input_bound}; "
            "the activation scales are inconsistent (recalibrate)."
        )
    return shift


def dyadic(ratio: torch.Tensor | float, shift: int) -> torch.Tensor:
    """Integer multipliers ``round(ratio * 2**shift)`` (int64)."""
    return torch.round(torch.as_tensor(ratio, dtype=torch.float64) * 2.0**shift).to(WIDE)


def rounding_offset(shift: int, addend: torch.Tensor | float = 0.0) -> torch.Tensor:
    """``round(addend * 2**shift) + 2**(shift - 1)``: a real addend (e.g. a bias in output units) plus the
    half that makes the final right shift round to nearest. Saturated to 2**61 (the output saturates anyway)."""
    scaled = torch.round(torch.as_tensor(addend, dtype=torch.float64) * 2.0**shift).clamp(-(2.0**61), 2.0**61)
    return scaled.to(WIDE) + 2 ** (shift - 1)


def as_constant(value) -> torch.Tensor:
    """An int64 constant tensor (0-d for a scalar)."""
    return torch.as_tensor(value, dtype=WIDE)


def saturate(x: torch.Tensor, bits: int) -> torch.Tensor:
    low, high = integer_range(bits)
    return x.clamp(low, high).to(storage_dtype(bits))


def requantize(x: torch.Tensor, multiplier: torch.Tensor, offset: torch.Tensor, shift: torch.Tensor, bits: int) -> torch.Tensor:
    """``(x * multiplier + offset) >> shift`` saturated to ``bits`` bits: rescale integers of one scale to another.

    ``multiplier``/``offset`` broadcast over the last dimension (per channel) or are scalars; ``offset``
    carries the rounding half and any bias (``rounding_offset``).
    """
    return saturate((x.to(WIDE) * multiplier + offset) >> shift, bits)


def requantize_sum(terms, offset: torch.Tensor, shift: torch.Tensor, bits: int) -> torch.Tensor:
    """``requantize`` of a sum of integer tensors of different scales, given as ``(tensor, multiplier)`` pairs
    that share one shift (a residual connection; the embedding sum)."""
    total = offset
    for x, multiplier in terms:
        total = total + x.to(WIDE) * multiplier
    return saturate(total >> shift, bits)


def rounding_shift(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``round(x / 2**shift)`` (half up) for a per-element ``shift >= 1``."""
    return ((x >> (shift - 1)) + 1) >> 1


# ---- i-exp and Softmax (Algorithm 3) -------------------------------------------------------------------


def softmax_constants(score_scale: float, exp_scale: float) -> dict[str, torch.Tensor]:
    """Integer constants of ``integer_softmax`` for scores of scale ``score_scale`` and a 16-bit exp of ``exp_scale``."""
    a, b, c = EXP_POLY
    x0 = math.floor(-LN2 / score_scale)
    if x0 >= 0 or -x0 >= 2**25:
        raise ValueError(f"attention score scale {score_scale:.3g} is outside the range the integer softmax supports.")
    # q = floor(x / x0) for x in [30 x0, 0] as a multiply and shift (exact: 30 x0**2 < 2**reciprocal_shift).
    reciprocal_shift = 2 * (-x0).bit_length() + 5
    reciprocal = -((-(2**reciprocal_shift)) // -x0)
    b_int = math.floor(b / a / score_scale)
    c_int = math.floor(c / a / score_scale**2)
    # exp(r) = (r + b_int) * r + c_int at scale a * score_scale**2, requantized straight to exp_scale.
    ratio = a * score_scale**2 / exp_scale
    shift = dyadic_shift(ratio, c_int + 1)
    return {
        "x0": as_constant(x0),
        "reciprocal": as_constant(reciprocal),
        "reciprocal_shift": as_constant(reciprocal_shift),
        "b": as_constant(b_int),
        "c": as_constant(c_int),
        "multiplier": dyadic(ratio, shift),
        "shift": as_constant(shift),
    }


def integer_softmax(
    scores: torch.Tensor, keep: torch.Tensor | None, x0: torch.Tensor, reciprocal: torch.Tensor,
    reciprocal_shift: torch.Tensor, b: torch.Tensor, c: torch.Tensor, multiplier: torch.Tensor, shift: torch.Tensor,
) -> torch.Tensor:
    """Softmax over the last dimension of integer ``scores``; returns int16 probabilities of scale 2**-8.

    ``keep`` (bool, broadcastable) marks the keys each query may attend to; masked keys get probability 0.
    i-exp: with x <= 0 after subtracting the row maximum, ``x = r + q * x0`` (x0 = -ln 2 in score units,
    r in (x0, 0]), ``exp(x) = poly(r) >> q``. The exp is requantized to 16 bits and normalized with one
    integer division per row, as in I-BERT.
    """
    x = scores.to(WIDE)
    if keep is not None:
        # Below any score minus the row maximum: clamps to 30 halvings, whose exp rounds to 0 in 16 bits.
        x = torch.where(keep, x, MASKED_SCORE)
    exp = integer_exp(x - x.amax(dim=-1, keepdim=True), x0, reciprocal, reciprocal_shift, b, c, multiplier, shift)
    total = exp.sum(dim=-1, keepdim=True).clamp(min=1)
    factor = torch.div(2**SOFTMAX_SUM_BITS, total, rounding_mode="floor")
    return ((exp * factor) >> (SOFTMAX_SUM_BITS - SOFTMAX_BITS)).to(torch.int16)


def integer_exp(
    x: torch.Tensor, x0: torch.Tensor, reciprocal: torch.Tensor, reciprocal_shift: torch.Tensor, b: torch.Tensor,
    c: torch.Tensor, multiplier: torch.Tensor, shift: torch.Tensor,
) -> torch.Tensor:
    """i-exp of int64 ``x <= 0`` (scores minus their row maximum) as 16-bit integers of the softmax's exp scale."""
    x = torch.maximum(x, x0 * EXP_MAX_HALVINGS)
    q = (-x * reciprocal) >> reciprocal_shift
    r = x - x0 * q
    poly = (r + b) * r + c
    # poly * multiplier < 2**62, so a total shift of 63 already rounds to 0 (and stays a defined shift).
    return rounding_shift(poly * multiplier, (shift + q).clamp(max=63)).clamp(0, 2 ** (EXP_BITS - 1) - 1)


EXP_TABLE_ENTRIES = 2**18


def exp_table(constants: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """``integer_exp`` of every ``x`` in ``[-T, 0]`` as int16 ``[T + 1]`` (index ``-x``), or None if that is more than
    ``EXP_TABLE_ENTRIES``: a lookup that gives the i-exp's integers exactly, by construction.

    Past ``T`` the exp is the table's last entry: with ``Q = 63 - shift`` halvings the total shift reaches 63, where
    ``poly * multiplier < 2**62`` rounds to 0; at 30 halvings (if sooner) ``integer_exp`` clamps. So ``T`` is
    ``min(Q, 30) * |x0|``; points past it (the masked score's included) are checked too.
    """
    x0 = int(constants["x0"])
    halvings = min(max(63 - int(constants["shift"]), 0), EXP_MAX_HALVINGS)
    last = halvings * -x0
    if last + 1 > EXP_TABLE_ENTRIES:
        return None
    table = integer_exp(-torch.arange(last + 1, dtype=WIDE), **constants)
    beyond = torch.tensor([-last - 1, -last + x0, (EXP_MAX_HALVINGS + 1) * x0, MASKED_SCORE - 2**22], dtype=WIDE)
    if not bool((integer_exp(beyond, **constants) == table[-1]).all()):  # not expected: then no table, the arithmetic
        return None
    return table.to(torch.int16)


# ---- i-GELU (Algorithm 2) ------------------------------------------------------------------------------


def gelu_constants(input_scale: torch.Tensor, input_bound: int) -> tuple[dict[str, torch.Tensor], torch.Tensor, int]:
    """Per-channel constants of ``integer_gelu`` for inputs of scale ``input_scale`` [C].

    Returns the constants, the per-channel output scale, and a bound on ``|integer_gelu(x)|`` for
    ``|x| <= input_bound``.
    """
    a, b = ERF_POLY
    scale = input_scale.to(torch.float64) / SQRT2
    b_int = torch.floor(b / scale)
    c_int = torch.floor(1.0 / a / scale**2)
    # I-BERT divides the erf polynomial by a fixed 2**14 to avoid overflow; this shift keeps ERF_BITS bits
    # of it for any input scale instead.
    erf_shift = torch.clamp(torch.ceil(torch.log2(c_int.abs() + 1)) - ERF_BITS, min=0)
    erf_scale = scale**2 * a * 2.0**erf_shift
    one = torch.floor(1.0 / erf_scale)
    output_scale = input_scale.to(torch.float64) * erf_scale / 2
    output_bound = int(input_bound) * int((2 * one.abs() + 2).max().item())
    constants = {"b": b_int.to(WIDE), "c": c_int.to(WIDE), "one": one.to(WIDE), "erf_shift": erf_shift.to(WIDE)}
    return constants, output_scale, output_bound


def integer_gelu(x: torch.Tensor, b: torch.Tensor, c: torch.Tensor, one: torch.Tensor, erf_shift: torch.Tensor) -> torch.Tensor:
    """i-GELU: ``x * (1 + erf(x / sqrt 2)) / 2`` on integers (int64 result; scale from ``gelu_constants``)."""
    x = x.to(WIDE)
    distance = torch.minimum(x.abs(), -b) + b
    erf = distance * distance + c
    erf = torch.where(x < 0, -erf, erf)  # sign(x) * erf; erf is 0 at x = 0 anyway (and 2x faster than sign())
    return x * ((erf >> erf_shift) + one)


# ---- i-sqrt and LayerNorm (Algorithm 4) ----------------------------------------------------------------


def bit_length(n: torch.Tensor) -> torch.Tensor:
    """Number of bits of non-negative int64 ``n`` (0 for 0), by binary search on shifts."""
    length = torch.zeros_like(n)
    for step in (32, 16, 8, 4, 2, 1):
        high = n >> step
        wide = high > 0
        n = torch.where(wide, high, n)
        length = length + wide * step
    return length + (n > 0)


SQRT_ITERATIONS = 7


def integer_sqrt(n: torch.Tensor) -> torch.Tensor:
    """``floor(sqrt(n))`` of non-negative int64 ``n`` (I-SQRT, Algorithm 4).

    Newton's iteration ``x <- (x + n // x) // 2`` from ``2**ceil(bits(n) / 2) >= sqrt(n)`` decreases
    monotonically to ``floor(sqrt(n))``; a start within 2x of the root needs at most 6 steps for
    63-bit ``n``, so a fixed count replaces the paper's data-dependent stopping test.
    """
    x = torch.ones_like(n) << ((bit_length(n) + 1) >> 1)
    for _ in range(SQRT_ITERATIONS):
        x = torch.minimum(x, (x + torch.div(n, x.clamp(min=1), rounding_mode="floor")) >> 1)
    return x


def integer_layernorm(x: torch.Tensor) -> torch.Tensor:
    """``(x - mean) / std`` over the last dimension, as int64 of scale ``sqrt(n) / 2**30`` (|result| <= 2**30).

    The mean is rounded to an integer and the standard deviation is the integer square root of the sum
    of squared deviations, as in I-BERT's integer LayerNorm. I-BERT then multiplies by ``2**31 // std``,
    which keeps only 6-7 bits for 22-bit inputs (std ~ 2**25); ``2**61 // std`` followed by a shift keeps
    25 or more (|centered| <= std, so the product stays below 2**61).
    """
    n = x.shape[-1]
    x = x.to(WIDE)
    mean = torch.div(2 * x.sum(dim=-1, keepdim=True) + n, 2 * n, rounding_mode="floor")
    centered = x - mean
    std = integer_sqrt((centered * centered).sum(dim=-1, keepdim=True)).clamp(min=1)
    factor = torch.div(2**LAYERNORM_FACTOR_BITS, std, rounding_mode="floor")
    return (centered * factor) >> (LAYERNORM_FACTOR_BITS - LAYERNORM_BITS)


def layernorm_affine_constants(
    weight: torch.Tensor, bias: torch.Tensor, output_scale: float
) -> dict[str, torch.Tensor]:
    """Multiplier, offset and shift that apply LayerNorm's ``weight``/``bias`` to ``integer_layernorm``'s
    output and requantize it to ``output_scale``, in one ``requantize``."""
    n = weight.shape[-1]
    ratio = weight.to(torch.float64) * (math.sqrt(n) / 2**LAYERNORM_BITS) / output_scale
    shift = dyadic_shift(float(ratio.abs().max().clamp(min=2.0**-60)), 2**LAYERNORM_BITS)
    return {
        "multiplier": dyadic(ratio, shift),
        "offset": rounding_offset(shift, bias.to(torch.float64) / output_scale),
        "shift": as_constant(shift),
    }
