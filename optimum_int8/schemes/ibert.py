"""``ibert``: integer-only BERT/RoBERTa/I-BERT encoders (docs/ibert.md), with their own quantizer hooks."""

from .base import CALIBRATION_OPTIONAL, Scheme

SCHEME = Scheme(
    name="ibert",
    summary="integer-only encoder (I-BERT) for BERT/RoBERTa/I-BERT: static scales from calibration data",
    card_tag="integer-only-quantization",
    card_sentence=(
        "Integer-only quantization with optimum-int8 (`ibert` scheme, I-BERT, Kim et al., 2021): the whole encoder "
        "runs on integers (int8 GEMMs, integer GELU, softmax and LayerNorm) with static activation scales; the task "
        "head stays in float."
    ),
    # calibration_data, or an I-BERT model whose own QuantAct ranges are calibrated
    calibration=CALIBRATION_OPTIONAL,
    supports_fallbacks=False,
    quantizer="optimum_int8.ibert.quantizer:IBertHfQuantizer",
)
