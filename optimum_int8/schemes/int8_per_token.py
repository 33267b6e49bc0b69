"""``int8_per_token``: dynamic W8A8 with one activation scale per token, optionally after SmoothQuant."""

from ..nn import Int8PerTokenLinear
from .base import Scheme

SCHEME = Scheme(
    name="int8_per_token",
    summary="dynamic int8 with one activation scale per token (the W8A8 standard for decoders; SmoothQuant optional)",
    card_tag="dynamic-quantization",
    card_sentence=(
        "Dynamic int8 quantization with per-token activation scales (optimum-int8's `int8_per_token` scheme): each "
        "int8 Linear module stores its weight as int8 with one fp32 scale per output channel, and quantizes each "
        "input token (row) to int8 with its own scale at every call, on oneDNN's int8 kernels."
    ),
    module_class=Int8PerTokenLinear,
    convert=lambda weight, bias, calibration: Int8PerTokenLinear.from_weight(
        weight, bias, smooth_scale=calibration.smooth_scale if calibration else None
    ),
    smoothing=True,  # calibration data only with smoothquant_alpha
)
