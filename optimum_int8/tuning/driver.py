"""Run the fallback search as neural-compressor ``autotune`` trials, and add what autotune lacks.

autotune evaluates the fp32 model, then quantizes and evaluates configs from ``config_set`` in the
order its ``sampler`` yields them, and stops at the first config whose result is
``>= baseline * (1 - tolerable_loss)`` or after ``max_trials``. Around it we add:

- Search order: our sampler yields the index the bisection wants next. It is a generator resumed
  only after the previous trial's result is in, so it adapts to outcomes.
- Direction and tolerance mode: autotune assumes higher is better and a relative loss. The eval_fn it
  gets returns ``1 - loss`` (``loss`` relative or absolute, sign-corrected for lower-is-better
  metrics) and ``1.0`` for the fp32 model, so its own test ``1 - loss >= 1 * (1 - tolerance)`` is
  exactly ``loss <= tolerance`` and its "best trial" is the one with the smallest loss.
- Continuing after a pass: autotune stops at the first passing trial, but bisection must then look
  below it; the driver calls autotune again with the search state carried over. The fp32 value is
  measured once; later calls get it back without re-evaluating the unchanged fp32 model.
- Timeout (checked between trials), a trial budget across calls, and best-so-far: when no trial
  meets the tolerance the result is the trial with the smallest loss, flagged as such.
"""

import copy
import dataclasses
import math
import numbers
import time
import warnings
from collections.abc import Callable

from tqdm.auto import tqdm

from ..evaluation import distributed
from ..nn import Int8DynamicLinear
from .config import TuningConfig
from .scheme import Int8DynamicFallbackConfig, nc_quantization, neural_compressor_logs
from .search import FallbackCountSearch, evaluation_budget

# bytes read per repaired weight, relatively: weight-only int8 < bf16 < fp32
DTYPE_COST = {"int8_weight_only": -1, "bfloat16": 0, "float32": 1}


class EvalFnFailedWarning(UserWarning):
    """The evaluation raised during an int8 trial: tuning stopped and keeps the best of the trials already run."""


class _TrialFailed(Exception):
    """Raised through autotune to stop it when an int8 trial's evaluation failed (the driver keeps the cause)."""


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def metric_value(value, what: str) -> float:
    """``value`` as the one number an evaluation returns; a ValueError showing what came back otherwise."""
    if hasattr(value, "numel") and hasattr(value, "item"):  # a tensor or an array
        if value.numel() != 1:
            raise ValueError(f"{what} returned a tensor of {value.numel()} elements ({_short(value)}); it must return one number.")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{what} returned {_short(value)} ({type(value).__name__}); it must return one number, the metric.")
    return float(value)


@dataclasses.dataclass
class Trial:
    """One int8 evaluation: how many top-ranked modules were kept in float, in which dtype, and the result."""

    index: int
    fallbacks: int
    fallback_dtype: str
    value: float
    loss: float
    passed: bool
    seconds: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class SearchOutcome:
    model: object
    fallback_modules: dict[str, str]
    fp32_value: float
    chosen: Trial
    trials: list[Trial]
    evaluations: int
    stop_reason: str

    @property
    def tolerance_met(self) -> bool:
        return self.chosen.passed


class _SearchSampler:
    """neural-compressor sampler protocol: built from the config set, iterated for config indices."""

    def __init__(self, driver: "AutotuneDriver"):
        self.driver = driver

    def __iter__(self):
        while (proposal := self.driver.next_proposal()) is not None:
            self.driver.current = proposal
            yield self.driver.config_index[proposal]

    def __len__(self) -> int:
        return len(self.driver.configs)


def _is_fp32_model(model) -> bool:
    return not any(isinstance(module, Int8DynamicLinear) for module in model.modules())


class AutotuneDriver:
    """Tune ``model`` (left unchanged) by keeping the top-k of ``ranking`` in float; ``run()`` returns the outcome.

    Args:
        ranking: candidate module names, most sensitive first.
        fixed_fallbacks: modules the user keeps in float in every trial ``{name: dtype}``.
        evaluate: ``evaluate(model) -> float``, the metric.
        search_dtype: precision of fallbacks during the search.
        confirm_bf16: after an fp32-fallback search, try the found set in bf16 once.
    """

    def __init__(self, model, ranking: list[str], fixed_fallbacks: dict[str, str], evaluate: Callable, tuning: TuningConfig,
                 higher_is_better: bool, search_dtype: str = "float32", confirm_bf16: bool = False, show_progress: bool = True):
        if not ranking:
            raise ValueError("no Linear module is left to tune: every one is already kept in float.")
        self.model = model
        self.ranking = list(ranking)
        self.fixed_fallbacks = dict(fixed_fallbacks)
        self.evaluate = evaluate
        self.tuning = tuning
        self.higher_is_better = higher_is_better
        self.search_dtype = search_dtype
        self.confirm_bf16 = confirm_bf16 and search_dtype != "bfloat16"
        self.search = FallbackCountSearch(len(self.ranking))
        self.max_trials = tuning.max_trials or evaluation_budget(len(self.ranking) + len(self.fixed_fallbacks))
        dtypes = [search_dtype] + (["bfloat16"] if self.confirm_bf16 else [])
        self.configs, self.config_index = [], {}
        for dtype in dtypes:
            for count in range(len(self.ranking)):
                self.config_index[(dtype, count)] = len(self.configs)
                self.configs.append(Int8DynamicFallbackConfig.with_fallbacks(self.fallbacks_for(dtype, count)))
        self.trials: list[Trial] = []
        self.fp32_value: float | None = None
        self.evaluations = 0
        self.current: tuple[str, int] | None = None
        self.deadline = None
        self.failure: tuple[int, Exception] | None = None  # (trial number, what its evaluation raised)
        self._progress = tqdm(total=self.max_trials, desc="Tuning trials", unit="trial", leave=False,
                              disable=not (show_progress and distributed.is_main_process()))

    def fallbacks_for(self, dtype: str, count: int) -> dict[str, str]:
        return self.fixed_fallbacks | dict.fromkeys(self.ranking[:count], dtype)

    # -- what the sampler asks
    def timed_out(self) -> bool:
        """Whether the timeout has passed; under torch.distributed, rank 0's clock decides for every rank."""
        if self.deadline is None or not self.trials:
            return False
        return distributed.broadcast(time.monotonic() > self.deadline, what="the tuning timeout")

    def next_proposal(self) -> tuple[str, int] | None:
        if len(self.trials) >= self.max_trials or self.timed_out():
            return None
        count = self.search.next_count()
        if count is not None:
            return (self.search_dtype, count)
        found = self.search.result
        tried = {(trial.fallback_dtype, trial.fallbacks) for trial in self.trials}
        if self.confirm_bf16 and found and ("bfloat16", found) not in tried:
            return ("bfloat16", found)
        return None

    # -- the eval_fn autotune calls
    def _score(self, model) -> float:
        if _is_fp32_model(model):
            if self.fp32_value is None:
                self.fp32_value = metric_value(self.evaluate(model), "the evaluation of the fp32 model (the first trial)")
                self.evaluations += 1
                if not math.isfinite(self.fp32_value):
                    raise ValueError(f"the fp32 model's metric is {self.fp32_value}; tuning needs a finite baseline.")
                self.tuning.loss(self.fp32_value, self.fp32_value, self.higher_is_better)  # rejects relative on 0
            return 1.0
        dtype, count = self.current
        start = time.monotonic()
        number = len(self.trials) + 1
        try:
            value = metric_value(self.evaluate(model), f"the evaluation of int8 trial {number}")
        except Exception as error:
            self.failure = (number, error)
            raise _TrialFailed from error
        self.evaluations += 1
        loss = self.tuning.loss(self.fp32_value, value, self.higher_is_better) if math.isfinite(value) else math.inf
        passed = loss <= self.tuning.tolerable_loss
        self.trials.append(Trial(len(self.trials) + 1, count, dtype, value, loss, passed, time.monotonic() - start))
        if dtype == self.search_dtype:
            self.search.report(count, passed)
        self._progress.update(1)
        self._progress.set_postfix(fallbacks=count, value=f"{value:.4g}", passed=passed)
        return 1.0 - loss if math.isfinite(loss) else -math.inf

    def run(self) -> SearchOutcome:
        start = time.monotonic()
        self.deadline = start + self.tuning.timeout if self.tuning.timeout else None
        returned = None
        try:
            while self.fp32_value is None or self.next_proposal() is not None:
                nc_config = nc_quantization.TuningConfig(
                    config_set=self.configs, sampler=lambda _: _SearchSampler(self),
                    tolerable_loss=self.tuning.tolerable_loss, max_trials=self.max_trials - len(self.trials),
                )
                with neural_compressor_logs(self.tuning.verbose):
                    model = nc_quantization.autotune(self.model, nc_config, eval_fn=self._score)
                if model is not None:
                    returned = model
        except _TrialFailed:
            number, error = self.failure
            if not self.trials:
                raise ValueError(f"the evaluation of int8 trial {number} (the first) failed: {_short(error, 300)}; "
                                 "no int8 trial completed, so there is no model to keep.") from error
            warnings.warn(
                f"the evaluation of int8 trial {number} failed ({_short(error, 300)}); tuning stopped and keeps the best "
                f"of the {len(self.trials)} trial(s) already run.", EvalFnFailedWarning, stacklevel=2,
            )
        finally:
            self._progress.close()
        return self._outcome(returned)

    def _stop_reason(self) -> str:
        if self.failure is not None:
            number, error = self.failure
            return f"evaluation failed at trial {number}: {type(error).__name__}: {str(error)[:200]}"
        if self.search.next_count() is None:
            return "search complete" if self.search.result is not None else "tolerance unreachable"
        if len(self.trials) >= self.max_trials:
            return "max_trials"
        return "timeout"

    def _outcome(self, returned) -> SearchOutcome:
        passing = [trial for trial in self.trials if trial.passed]
        if passing:
            chosen = min(passing, key=lambda t: (t.fallbacks, DTYPE_COST[t.fallback_dtype]))
        else:
            chosen = min(self.trials, key=lambda t: (t.loss, t.fallbacks))
        fallbacks = self.fallbacks_for(chosen.fallback_dtype, chosen.fallbacks)
        if returned is not None and returned.config.quantization_config.manifest.fallback_modules == fallbacks:
            model = returned
        else:
            with neural_compressor_logs(self.tuning.verbose):
                model = nc_quantization.quantize(
                    copy.deepcopy(self.model), self.configs[self.config_index[(chosen.fallback_dtype, chosen.fallbacks)]]
                )
        return SearchOutcome(model, fallbacks, self.fp32_value, chosen, list(self.trials), self.evaluations, self._stop_reason())
