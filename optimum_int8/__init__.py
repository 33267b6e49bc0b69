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

# Tuning imports neural-compressor (seconds); load it on first use, not on every `import optimum_int8`.
_TUNING_NAMES = ("INCQuantizer", "TuningConfig")


def __getattr__(name):
    if name in _TUNING_NAMES:
        from . import tuning

        return getattr(tuning, name)
    raise AttributeError(f"module 'optimum_int8' has no attribute {name!r}")

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
    "INCQuantizer",
    "Int8Config",
    "Int8DynamicLinear",
    "Int8HfQuantizer",
    "LegacyCheckpointError",
    "TuningConfig",
    "TuningRecord",
    "convert_legacy_checkpoint",
    "pipeline",
    "quantize_model",
]
