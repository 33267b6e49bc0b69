"""``int8_dynamic``: int8 weights per output channel, activations quantized per tensor at every call."""

from ..nn import Int8DynamicLinear
from .base import Scheme

SCHEME = Scheme(
    name="int8_dynamic",
    summary="dynamic int8: one activation scale per call for the whole input tensor (fastest to build, no data)",
    card_tag="dynamic-quantization",
    card_sentence=(
        "Dynamic int8 quantization with optimum-int8: each int8 Linear module stores its weight as int8 with one fp32 "
        "scale per output channel, and quantizes its input activations to int8 on the fly at every call, one scale "
        "per tensor (on x86 CPUs: oneDNN's int8 kernels on AMX, fbgemm's elsewhere and for decoding)."
    ),
    module_class=Int8DynamicLinear,
    convert=lambda weight, bias, calibration: Int8DynamicLinear.from_weight(weight, bias),
)
