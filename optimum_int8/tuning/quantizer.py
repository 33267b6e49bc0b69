"""``INCQuantizer``: quantize a transformers model to int8, optionally tuned to an accuracy goal, and save it."""

import copy
import functools
import importlib.metadata
import logging
import warnings
from pathlib import Path

import transformers
from transformers import AutoConfig, AutoTokenizer, PreTrainedModel

from .. import linear_modules, saving
from ..configuration import Int8Config, TuningRecord, library_versions, metric_loss
from ..nn import kernels
from ..evaluation import TaskEvaluator, distributed, higher_is_better
from ..legacy import find_legacy_checkpoint
from ..quantizer import check_float_model, quantize_model
from ..tasks import task_spec
from . import sensitivity
from .config import TuningConfig
from .driver import AutotuneDriver, SearchOutcome
from .scheme import trial_base

logger = logging.getLogger(__name__)


class ToleranceNotMetWarning(UserWarning):
    """Tuning returned its best model, which does not meet the requested tolerance."""


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX-BF16), so bf16 fallbacks are fast."""
    return kernels.capabilities.current().native_bf16


def _tuning_library_versions() -> dict[str, str]:
    versions = library_versions()
    try:
        versions["neural-compressor"] = importlib.metadata.version("neural-compressor")
    except importlib.metadata.PackageNotFoundError:
        versions["neural-compressor"] = "unknown"
    return versions


def _model_class(path: str, task: str | None, model_kwargs: dict):
    """The task's Auto class; without a task, the architecture the checkpoint was saved from (head included).

    Refuses a checkpoint that is already quantized (ours or a legacy INC one) and, without ``task``, one
    whose head is unknown: loading it with ``AutoModel`` would quantize the base model and drop the head.
    """
    if find_legacy_checkpoint(path, model_kwargs) is not None:
        raise ValueError(f"{path} is a legacy INC int8 checkpoint, already quantized: load it with INCModelFor<Task>, "
                         "convert it with `optimum-int8 convert`, or quantize the fp32 model it came from.")
    config = AutoConfig.from_pretrained(path, **{k: v for k, v in model_kwargs.items() if k in ("revision", "token", "cache_dir")})
    quantization = getattr(config, "quantization_config", None)
    if quantization is not None:
        method = quantization.get("quant_method") if isinstance(quantization, dict) else getattr(quantization, "quant_method", None)
        raise ValueError(f"{path} is already quantized (quant_method {method!r}); quantize the fp32 model it came from.")
    if task is not None:
        return task_spec(task).auto_class
    architectures = config.architectures or []
    model_class = getattr(transformers, architectures[0], None) if architectures else None
    if model_class is None:
        named = f"names architecture {architectures[0]!r}, which transformers {transformers.__version__} does not have" \
            if architectures else "names no architecture"
        raise ValueError(f"{path}: config.json {named}, so the model's head is unknown and would be lost; pass its task "
                         "(task=..., --task).")
    return model_class


# Files that hold a tokenizer's vocabulary; without one, transformers builds an empty tokenizer from the
# model config and every word becomes [UNK].
TOKENIZER_VOCABULARY_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                              "tokenizer.model", "source.spm")


def load_tokenizer(path):
    """``AutoTokenizer.from_pretrained(path)``; an OSError for a local directory without a vocabulary."""
    directory = Path(path).expanduser()
    if directory.is_dir() and not any((directory / name).is_file() for name in TOKENIZER_VOCABULARY_FILES):
        raise FileNotFoundError(
            f"{directory} has no tokenizer (none of {list(TOKENIZER_VOCABULARY_FILES)}); transformers would build one "
            "with an empty vocabulary and every word would be [UNK]. Save the model's tokenizer there."
        )
    return AutoTokenizer.from_pretrained(path)


def _agreed(eval_fn):
    """``eval_fn`` as every rank must see it: rank 0's value on every rank, a failure on any rank raised on all.

    A user's function runs whole on every rank (it is not sharded, unless it uses ``TaskEvaluator``),
    and ranks could compute different values; tuning decisions need one.
    """
    if not distributed.is_distributed():
        return eval_fn

    @functools.wraps(eval_fn)
    def agreed(model):
        return distributed.on_every_rank(lambda: eval_fn(model), what="eval_fn")[0]

    return agreed


class INCQuantizer:
    """Quantizes ``model`` (left unchanged) to dynamic int8, with accuracy-aware tuning when asked.

    Build it with ``INCQuantizer.from_pretrained(model_or_path, task=...)`` or directly from a loaded
    model. ``quantize`` returns the int8 model (a plain transformers model) and saves it when given a
    ``save_directory``; a tuned model's manifest carries the ``TuningRecord``.

    Under torch.distributed (``torchrun``, ``accelerate launch``; every rank runs the same script) the
    built-in evaluation of each trial is sharded over the ranks and the sensitivity ranking split
    between them; every decision is the same on every rank, and only rank 0 saves.
    """

    def __init__(self, model: PreTrainedModel, task: str | None = None, tokenizer=None):
        check_float_model(model, "INCQuantizer")
        self.model = model
        # Any task a loader supports quantizes; the built-in evaluation (TaskEvaluator) says which ones tune.
        self.task = task_spec(task).name if task is not None else None
        self.tokenizer = tokenizer
        self.last_outcome: SearchOutcome | None = None

    @classmethod
    def from_pretrained(cls, model_or_path, task: str | None = None, tokenizer=None, **model_kwargs) -> "INCQuantizer":
        """From a loaded model or a model directory / repo id (loaded in fp32 with the task's Auto class)."""
        if isinstance(model_or_path, PreTrainedModel):
            return cls(model_or_path, task=task, tokenizer=tokenizer)
        path = str(model_or_path)
        model = _model_class(path, task, model_kwargs).from_pretrained(path, **model_kwargs).eval()
        if tokenizer is None:
            try:
                tokenizer = load_tokenizer(path)
            except (OSError, ValueError):
                tokenizer = None  # untuned quantization needs none; built-in evaluation says it does
        return cls(model, task=task, tokenizer=tokenizer)

    def quantize(
        self,
        quantization_config: Int8Config | None = None,
        tuning: TuningConfig | None = None,
        eval_dataset=None,
        eval_fn=None,
        calibration_dataset=None,
        save_directory=None,
        overwrite: bool = False,
        columns: dict[str, str] | None = None,
        batch_size: int = 8,
        max_length: int = 512,
        max_eval_samples: int | None = None,
        generation_kwargs: dict | None = None,
        show_progress: bool = True,
        calibration_samples: int | None = None,
    ) -> PreTrainedModel:
        """Quantize; with ``tuning``, keep the fewest most-sensitive modules in float that meet the tolerance.

        Args:
            quantization_config: modules it names in ``modules_in_fp32`` / ``modules_in_bf16`` stay in
                float in every trial; the tuner adds its fallbacks on top.
            tuning: the accuracy goal; without it every other Linear module becomes int8, untuned.
            eval_dataset: a ``datasets.Dataset`` or local json/jsonl/csv/tsv/parquet file, evaluated
                with the task's built-in metric (``tuning.metric``).
            eval_fn: instead of ``eval_dataset``, your own ``eval_fn(model) -> float``.
            calibration_dataset: rows (a dataset or local file, tokenized as the task's evaluation does) or a
                list of model-input dicts. The scheme calibrates on it where it needs to (static scales,
                SmoothQuant), with or without tuning; tuning ranks modules by sensitivity on it (default: the
                first ``tuning.calibration_samples`` rows of ``eval_dataset``).
            calibration_samples: rows of ``calibration_dataset`` to use (default: ``tuning.calibration_samples``,
                or 8 without tuning).
            save_directory: written atomically with ``save_pretrained``, tokenizer included; never over the
                model being quantized or another model unless ``overwrite`` (``optimum_int8.saving``).
        """
        config = copy.deepcopy(quantization_config) if quantization_config is not None else Int8Config()
        options = dict(columns=columns, batch_size=batch_size, max_length=max_length, max_samples=max_eval_samples,
                       generation_kwargs=generation_kwargs, show_progress=show_progress)
        samples = calibration_samples or (tuning.calibration_samples if tuning is not None else TuningConfig.calibration_samples)
        scheme_calibration = None
        if config.needs_calibration_data:
            if calibration_dataset is None:
                raise ValueError(
                    f"Int8Config(scheme={config.scheme!r}) calibrates its activations: pass calibration_dataset= "
                    "(rows the model is not evaluated on) to INCQuantizer.quantize."
                )
            scheme_calibration = self._batches(calibration_dataset, samples, options)
        if tuning is None:
            qmodel = quantize_model(copy.deepcopy(self.model), config, calibration_data=scheme_calibration)
        else:
            qmodel = self._tune(config, tuning, eval_dataset, eval_fn, calibration_dataset, options, scheme_calibration)
        if save_directory is not None:
            distributed.on_main_process(lambda: self.save(qmodel, save_directory, overwrite=overwrite),
                                        what=f"saving to {save_directory}")
        return qmodel

    def save(self, qmodel, save_directory, overwrite: bool = False) -> None:
        """The model, the tokenizer and the model card, in one crash-safe replacement of ``save_directory``.

        Refused (unless ``overwrite``) when that is the model being quantized or holds a model that is
        not an optimum-int8 checkpoint (``optimum_int8.saving``).
        """
        saving.save_quantized(qmodel, save_directory, tokenizer=self.tokenizer, overwrite=overwrite)

    def _evaluator(self, source, **options) -> TaskEvaluator:
        if self.task is None:
            raise ValueError("built-in evaluation needs the task: INCQuantizer.from_pretrained(..., task='...').")
        return TaskEvaluator(self.task, source, self.tokenizer, **options)

    def _tune(self, config, tuning, eval_dataset, eval_fn, calibration_dataset, options, scheme_calibration):
        if eval_fn is not None:
            evaluate = _agreed(eval_fn)
            metric_name = tuning.metric if isinstance(tuning.metric, str) else getattr(eval_fn, "__name__", "eval_fn")
            direction = tuning.higher_is_better if tuning.higher_is_better is not None else higher_is_better(metric_name)
        elif eval_dataset is not None:
            evaluate = self._evaluator(eval_dataset, metric=tuning.metric, metric_key=tuning.metric_key, **options)
            metric_name = evaluate.metric_name
            direction = tuning.higher_is_better if tuning.higher_is_better is not None else evaluate.higher_is_better
        else:
            raise ValueError("tuning needs eval_dataset (built-in task evaluation) or eval_fn(model) -> float.")
        batches = self._calibration_batches(tuning, calibration_dataset, eval_dataset, options)

        linears = linear_modules.find_float_linears(self.model)
        fixed = dict.fromkeys(linear_modules.resolve_module_names(config.modules_in_fp32, linears, "Int8Config.modules_in_fp32"), "float32")
        fixed |= dict.fromkeys(linear_modules.resolve_module_names(config.modules_in_bf16, linears, "Int8Config.modules_in_bf16"), "bfloat16")
        candidates = [name for name in linears if name not in fixed]
        ranking = sensitivity.rank_by_sensitivity(self.model, candidates, batches, show_progress=options["show_progress"])

        search_dtype = "float32" if tuning.fallback_dtype == "auto" else tuning.fallback_dtype
        driver = AutotuneDriver(
            self.model, [name for name, _ in ranking], fixed, evaluate, tuning, direction, search_dtype=search_dtype,
            confirm_bf16=tuning.fallback_dtype == "auto" and cpu_has_native_bf16(), show_progress=options["show_progress"],
        )
        with trial_base(config, scheme_calibration):
            outcome = driver.run()
        self.last_outcome = outcome
        record = self._record(outcome, tuning, metric_name, direction)
        outcome.model.config.quantization_config.manifest.tuning = record
        if not record.tolerance_met and distributed.is_main_process():
            warnings.warn(
                f"tuning did not meet the tolerance ({tuning.tolerance_mode} loss <= {tuning.tolerable_loss}) "
                f"[{record.stop_reason}]; returning the best model found: {metric_name} {record.int8_value:.6g} vs fp32 "
                f"{record.fp32_value:.6g} with {outcome.chosen.fallbacks} tuned fallback(s). The manifest records "
                "tolerance_met=false.",
                ToleranceNotMetWarning,
                stacklevel=3,
            )
        return outcome.model

    def _calibration_batches(self, tuning, calibration_dataset, eval_dataset, options) -> list[dict]:
        source = calibration_dataset if calibration_dataset is not None else eval_dataset
        if source is None:
            raise ValueError("sensitivity ranking needs calibration_dataset (rows or a list of model-input dicts) or eval_dataset.")
        return self._batches(source, tuning.calibration_samples, options)

    def _batches(self, source, samples: int, options) -> list[dict]:
        """Model-input batches: ``source`` itself when it is a list of them, else its first ``samples`` rows tokenized."""
        if isinstance(source, list):
            return source
        return self._evaluator(source, **options | {"max_samples": samples}).calibration_inputs(samples)

    @staticmethod
    def _record(outcome: SearchOutcome, tuning: TuningConfig, metric_name: str, direction: bool) -> TuningRecord:
        fp32_value, chosen = outcome.fp32_value, outcome.chosen
        relative = metric_loss(fp32_value, chosen.value, direction) if fp32_value != 0 else None
        dtypes = {dtype for dtype in outcome.fallback_modules.values()}
        return TuningRecord(
            metric=metric_name,
            fp32_value=fp32_value,
            int8_value=chosen.value,
            tolerance=tuning.tolerable_loss,
            tolerance_mode=tuning.tolerance_mode,
            higher_is_better=direction,
            trials=len(outcome.trials),
            library_versions=_tuning_library_versions(),
            relative_loss=relative,
            tolerance_met=outcome.tolerance_met,
            evaluations=outcome.evaluations,
            trial_results=[trial.to_dict() for trial in outcome.trials],
            fallback_dtype=chosen.fallback_dtype if chosen.fallbacks else (dtypes.pop() if len(dtypes) == 1 else None),
            sensitivity_measure=sensitivity.MEASURE,
            stop_reason=outcome.stop_reason,
        )
