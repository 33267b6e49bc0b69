"""``TaskEvaluator``: a task's metric on a dataset as ``evaluator(model) -> float``, in one process or sharded over ranks."""

from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..tasks import EVALUATED_TASKS, canonical_task, evaluation_for
from . import distributed
from .data import batches, check_values, load_eval_dataset, resolve_columns, source_name
from .metrics import higher_is_better
from .task_evaluation import DataError


def normalize_task(task: str) -> str:
    """The registry name of a task that has a built-in evaluation (aliases resolved), or a ValueError."""
    evaluation_for(task)
    return canonical_task(task)


class TaskEvaluator:
    """``evaluator(model) -> float``: the chosen metric of ``task`` on ``dataset``, with a tqdm bar.

    Under torch.distributed (``torchrun``, ``accelerate launch``) every rank builds the same evaluator;
    the batches are split into one contiguous shard per rank, the predictions gathered in row order and
    the metric computed once on rank 0 and broadcast, so every rank returns the value one process
    would. A failure on any rank raises ``DistributedError`` on every rank.

    Args:
        task: a task with a built-in evaluation (``optimum_int8.tasks.TASK_METRICS``; aliases such as
            ``"causal-lm"`` accepted).
        dataset: a ``datasets.Dataset`` or a path to a json/jsonl/csv/tsv/parquet file.
        tokenizer: the model's tokenizer (a fast one for token classification and QA).
        metric: a built-in metric name of the task (default: the task's first), or an ``evaluate``
            metric object / callable ``metric(predictions=..., references=...)``.
        metric_key: which entry of a user metric's result dict to use (needed when it has several).
        columns: ``{role: column}`` overrides; the roles are the task's ``TaskEvaluation.columns``.
        generation_kwargs: overrides of the model's generation config for seq2seq tasks.
        label_names: tag/label names when the dataset's labels are ints without ClassLabel names.
    """

    def __init__(
        self,
        task: str,
        dataset,
        tokenizer,
        metric: str | Callable | None = None,
        metric_key: str | None = None,
        columns: dict[str, str] | None = None,
        batch_size: int = 8,
        max_length: int = 512,
        max_samples: int | None = None,
        generation_kwargs: dict | None = None,
        label_names: Sequence[str] | None = None,
        show_progress: bool = True,
    ):
        self.task = normalize_task(task)
        self.spec = EVALUATED_TASKS[self.task]
        self.loop = self.spec.evaluation
        self.source = source_name(dataset)
        dataset = load_eval_dataset(dataset)
        if max_samples is not None:
            dataset = dataset.select(range(min(max_samples, len(dataset))))
        if len(dataset) == 0:
            raise ValueError("the evaluation dataset is empty.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset = dataset
        self.columns = resolve_columns(dataset, self.task, columns, source=self.source)
        check_values(self._rows(), self.columns, self.loop.column_kinds, self.source)
        self.batch_size = batch_size
        self.max_length = max_length
        self.generation_kwargs = dict(generation_kwargs or {})
        self.label_names = list(label_names) if label_names is not None else None
        self.show_progress = show_progress
        self.user_metric = None
        self.metric_key = metric_key
        if metric is None or isinstance(metric, str):
            self.metric_name = metric or self.spec.default_metric
            if self.metric_name not in self.spec.metrics:
                raise ValueError(
                    f"metric {self.metric_name!r} is not a built-in metric of task {self.task!r}; "
                    f"choose from {self.spec.metrics} or pass an evaluate metric object."
                )
        else:
            if not self.loop.accepts_user_metric:
                raise ValueError(f"task {self.task!r} computes {self.spec.metrics} from the model's logits; "
                                 "a user metric cannot replace them.")
            if not callable(getattr(metric, "compute", None)) and not callable(metric):
                raise TypeError(f"metric must be a name, an evaluate metric object or a callable, got {type(metric).__name__}")
            self.user_metric = metric
            self.metric_name = metric_key or getattr(metric, "name", None) or getattr(metric, "__name__", "metric")
        if tokenizer is None:
            raise ValueError(f"task {self.task!r} needs the model's tokenizer to build inputs.")
        if self.loop.needs_fast_tokenizer and not getattr(tokenizer, "is_fast", False):
            raise ValueError(f"task {self.task!r} needs a fast tokenizer (word ids / offsets); got {type(tokenizer).__name__}.")
        self.tokenizer = self.loop.prepare_tokenizer(tokenizer)

    @property
    def higher_is_better(self) -> bool:
        return self.user_metric is not None or higher_is_better(self.metric_name)

    @property
    def num_samples(self) -> int:
        return len(self.dataset)

    def __call__(self, model) -> float:
        return self.evaluate(model)[self.metric_name]

    def column(self, row: dict, role: str):
        return row[self.columns[role]]

    def _rows(self) -> list[dict]:
        return self.dataset.select_columns(list(self.columns.values())).to_list()

    def evaluate(self, model) -> dict[str, float]:
        """All metrics of the task (or the user metric's result) for ``model``, the same on every rank."""
        model.eval()
        all_batches = batches(self._rows(), self.batch_size)
        mine = distributed.shard(len(all_batches))
        predictions, references, error = [], [], None
        progress = tqdm(mine, desc=f"Evaluating {self.task}", unit="batch", leave=False,
                        disable=not (self.show_progress and distributed.is_main_process()))
        try:
            for index in mine:  # all of them before the model runs: a bad label fails at once
                references.extend(self._references(model, all_batches[index], first=index * self.batch_size))
            with torch.inference_mode():
                for index in progress:
                    predictions.extend(self.loop.predict(self, model, all_batches[index]))
        except Exception as exc:  # every rank learns of it in the gather below
            if not distributed.is_distributed():
                raise
            first = mine.start * self.batch_size
            exc.add_note(f"while evaluating rows {first}-{min(mine.stop * self.batch_size, self.num_samples) - 1} "
                         f"(this rank's shard of {self.num_samples})")
            error = exc
        finally:
            progress.close()
        if distributed.is_distributed():
            what = f"evaluating {self.task} on {self.num_samples} rows"
            shards = distributed.gather((self.num_samples, predictions, references), error, what=what)
            sizes = [size for size, _, _ in shards]
            if len(set(sizes)) > 1:
                raise distributed.DistributedError(
                    f"{what}: the ranks read different datasets ({sizes} rows on ranks 0-{len(sizes) - 1}); every rank "
                    "must evaluate the same rows (the same file, split and max_samples)."
                )
            predictions = [item for _, shard_predictions, _ in shards for item in shard_predictions]
            references = [item for _, _, shard_references in shards for item in shard_references]
        result, self.metric_name, self.metric_key = distributed.on_main_process(
            lambda: self._reduce(model, predictions, references), what=f"computing {self.task} metrics"
        )
        return result

    def _references(self, model, rows: list[dict], first: int) -> list:
        """The references of ``rows`` (``first`` the index of the first), a DataError naming the file and row."""
        references = []
        for index, row in enumerate(rows, first):
            try:
                references.extend(self.loop.references(self, model, [row]))
            except DataError as error:
                raise DataError(f"{self.source}, row {index}: {error}") from None
        return references

    def _reduce(self, model, predictions, references) -> tuple[dict[str, float], str, str | None]:
        """The metrics from all predictions, with the metric name and key (a user metric's key is found here)."""
        if self.user_metric is None:
            return self.loop.reduce(self, model, predictions, references), self.metric_name, self.metric_key
        predictions, references = self.loop.evaluate_format(predictions, references)
        compute = getattr(self.user_metric, "compute", self.user_metric)
        result = compute(predictions=predictions, references=references)
        if not isinstance(result, dict):
            return {self.metric_name: float(result)}, self.metric_name, self.metric_key
        metric_key = self.metric_key
        if metric_key is None:
            if len(result) != 1:
                raise ValueError(f"the metric returned {sorted(result)}; pass metric_key=... to choose the one to tune on.")
            metric_key = next(iter(result))
        if metric_key not in result:
            raise KeyError(f"metric_key {metric_key!r} is not in the metric's result {sorted(result)}.")
        values = {key: float(value) for key, value in result.items() if isinstance(value, (int, float, np.floating))}
        return values, metric_key, metric_key

    def calibration_inputs(self, num_samples: int, batch_size: int | None = None) -> list[dict]:
        """Model inputs (tokenized batches) from the first ``num_samples`` rows, for sensitivity measurement.

        Seq2seq batches carry ``labels`` so that the decoder runs on the reference text.
        """
        rows = self._rows()[:num_samples]
        return [self.loop.calibration_inputs(self, batch) for batch in batches(rows, batch_size or self.batch_size)]
