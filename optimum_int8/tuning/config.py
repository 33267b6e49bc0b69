"""``TuningConfig``: what accuracy-aware tuning aims for and what it may spend."""

import dataclasses
import math
import numbers
from collections.abc import Callable

from ..configuration import TOLERANCE_MODES, metric_loss

FALLBACK_DTYPE_CHOICES = ("auto", "float32", "bfloat16", "int8_weight_only")


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclasses.dataclass
class TuningConfig:
    """Accuracy goal and budget of a tuning run.

    Args:
        metric: a built-in metric of the task (``"rougeLsum"``, ``"accuracy"``, ``"perplexity"``, ...), an
            ``evaluate`` metric object, or a callable ``metric(predictions=..., references=...)``; with a
            user ``eval_fn``, just the name to record (default: the eval_fn's name).
        tolerable_loss: the largest acceptable loss of int8 against fp32.
        tolerance_mode: ``"relative"`` (loss / |fp32 value|) or ``"absolute"`` (in metric units).
        higher_is_better: direction of the metric; ``None`` infers it (perplexity and loss: lower).
        max_trials: most int8 evaluations (fp32 baseline not counted); ``None``: the search budget,
            ceil(log2(#Linear)) + 3.
        timeout: seconds for the whole run, checked between trials (a running trial is finished).
        fallback_dtype: precision of modules kept in float. ``"auto"`` searches with fp32 fallbacks and,
            on a CPU with native bf16 (AVX-512 BF16 / AMX), spends one more trial to try them in bf16
            and keeps bf16 if it still meets the tolerance. ``"float32"`` / ``"bfloat16"`` force one.
            ``"int8_weight_only"`` repairs the most sensitive modules with weight-only int8 instead of float
            (a quarter of fp32's bytes; for W8A8 schemes, where the activations are what hurts).
        calibration_samples: dataset rows used once to rank modules by sensitivity.
        metric_key: the entry of a user metric's result dict to tune on.
        verbose: show neural-compressor's own logs (per-trial tables).
    """

    metric: str | Callable | None = None
    tolerable_loss: float = 0.01
    tolerance_mode: str = "relative"
    higher_is_better: bool | None = None
    max_trials: int | None = None
    timeout: float | None = None
    fallback_dtype: str = "auto"
    calibration_samples: int = 8
    metric_key: str | None = None
    verbose: bool = False

    def __post_init__(self):
        if self.tolerance_mode not in TOLERANCE_MODES:
            raise ValueError(f"TuningConfig.tolerance_mode must be one of {TOLERANCE_MODES}, got {self.tolerance_mode!r}")
        if not (_is_number(self.tolerable_loss) and 0 <= self.tolerable_loss < math.inf):
            raise ValueError(f"TuningConfig.tolerable_loss must be a finite number >= 0, got {self.tolerable_loss!r}")
        if self.tolerance_mode == "relative" and self.tolerable_loss > 1:
            raise ValueError(
                f"TuningConfig.tolerable_loss is {self.tolerable_loss!r}, a relative loss above 100%: every model passes. "
                "Pass a fraction (0.01 = 1%), or tolerance_mode='absolute' for metric units."
            )
        if self.max_trials is not None and not (_is_integer(self.max_trials) and self.max_trials >= 1):
            raise ValueError(f"TuningConfig.max_trials must be an integer >= 1 (or None for the search budget), got {self.max_trials!r}")
        if self.timeout is not None and not (_is_number(self.timeout) and 0 < self.timeout < math.inf):
            raise ValueError(f"TuningConfig.timeout must be a positive, finite number of seconds, got {self.timeout!r}")
        if not (_is_integer(self.calibration_samples) and self.calibration_samples >= 1):
            raise ValueError(f"TuningConfig.calibration_samples must be an integer >= 1, got {self.calibration_samples!r}")
        if self.fallback_dtype not in FALLBACK_DTYPE_CHOICES:
            raise ValueError(f"TuningConfig.fallback_dtype must be one of {FALLBACK_DTYPE_CHOICES}, got {self.fallback_dtype!r}")

    def loss(self, fp32_value: float, value: float, higher_is_better: bool) -> float:
        """How much worse ``value`` is than ``fp32_value`` in this config's mode (negative: better)."""
        return metric_loss(fp32_value, value, higher_is_better, self.tolerance_mode)
