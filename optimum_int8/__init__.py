"""optimum-int8: int8 transformers models for fast, small CPU inference, loaded with from_pretrained.

Importing the package registers the ``optimum_int8`` quant_method with transformers.
"""

from .configuration import FallbackManifest, Int8Config, TuningRecord
from .legacy import LegacyCheckpointError, convert_legacy_checkpoint
from .modeling import (
    INCModel,
    INCModelForCausalLM,
    INCModelForMaskedLM,
    INCModelForMultipleChoice,
    INCModelForQuestionAnswering,
    INCModelForSeq2SeqLM,
    INCModelForSequenceClassification,
    INCModelForTokenClassification,
)
from .nn import BFloat16Linear, Int8DynamicLinear
from .pipelines import pipeline
from .quantizer import Int8HfQuantizer, quantize_model, register

register()

__version__ = "0.1.0"

__all__ = [
    "BFloat16Linear",
    "FallbackManifest",
    "INCModel",
    "INCModelForCausalLM",
    "INCModelForMaskedLM",
    "INCModelForMultipleChoice",
    "INCModelForQuestionAnswering",
    "INCModelForSeq2SeqLM",
    "INCModelForSequenceClassification",
    "INCModelForTokenClassification",
    "Int8Config",
    "Int8DynamicLinear",
    "Int8HfQuantizer",
    "LegacyCheckpointError",
    "TuningRecord",
    "convert_legacy_checkpoint",
    "pipeline",
    "quantize_model",
]
