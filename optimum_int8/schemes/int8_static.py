"""``int8_static``: W8A8 with activation scales fixed by calibration, optionally after SmoothQuant."""

from ..nn import Int8StaticActivationLinear
from .base import CALIBRATION_REQUIRED, Scheme

SCHEME = Scheme(
    name="int8_static",
    summary="static int8: activation scales measured once on calibration data (needs calibration_data)",
    card_tag="static-quantization",
    card_sentence=(
        "Static int8 quantization with optimum-int8 (`int8_static` scheme): each int8 Linear module stores its weight "
        "as int8 with one fp32 scale per output channel, and quantizes its input with one scale and zero point "
        "measured on calibration data."
    ),
    module_class=Int8StaticActivationLinear,
    convert=lambda weight, bias, calibration: Int8StaticActivationLinear.from_weight(
        weight, bias, input_qparams=calibration.input_qparams if calibration else None,
        smooth_scale=calibration.smooth_scale if calibration else None,
    ),
    calibration=CALIBRATION_REQUIRED,
    smoothing=True,
    observers=("minmax", "histogram"),
)
