"""``int8_weight_only``: int8 weights per output channel, float (bf16) activations."""

from ..nn import Int8WeightOnlyLinear
from .base import Scheme

SCHEME = Scheme(
    name="int8_weight_only",
    summary="weight-only int8: int8 weights, bf16 activations (most accurate; fastest for memory-bound decoding)",
    card_tag="weight-only-quantization",
    card_sentence=(
        "Weight-only int8 quantization with optimum-int8 (`int8_weight_only` scheme): each int8 Linear module stores "
        "its weight as int8 with one scale per output channel and multiplies it with bf16 activations, which are not "
        "quantized."
    ),
    module_class=Int8WeightOnlyLinear,
    convert=lambda weight, bias, calibration: Int8WeightOnlyLinear.from_weight(weight, bias),
    compiles=True,
)
