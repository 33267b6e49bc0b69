"""Accuracy-aware int8 tuning driven by neural-compressor 3.x's ``autotune``.

Importing this package registers our scheme (``Int8DynamicFallbackConfig`` and its algorithm) with
neural-compressor.
"""

from .config import TuningConfig
from .driver import EvalFnFailedWarning, SearchOutcome, Trial
from .quantizer import INCQuantizer, ToleranceNotMetWarning, cpu_has_native_bf16
from .scheme import Int8DynamicFallbackConfig
from .search import FallbackCountSearch, evaluation_budget
from .sensitivity import rank_by_sensitivity

__all__ = [
    "EvalFnFailedWarning",
    "FallbackCountSearch",
    "INCQuantizer",
    "Int8DynamicFallbackConfig",
    "SearchOutcome",
    "ToleranceNotMetWarning",
    "Trial",
    "TuningConfig",
    "cpu_has_native_bf16",
    "evaluation_budget",
    "rank_by_sensitivity",
]
