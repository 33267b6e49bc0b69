"""Task evaluation: data, metrics, the per-task loops that feed them, and their sharding over ranks.

``TaskEvaluator(task, dataset, tokenizer)`` turns a ``datasets.Dataset`` (or a local json/jsonl/csv/tsv/
parquet file) into ``evaluator(model) -> float``: the callable the tuner hands to neural-compressor.

- ``data``: reading datasets and data files, finding the task's columns in them and checking their values
  (``DataError`` names the file, the row and the column).
- ``metrics``: ROUGE, accuracy, F1, entity scores, SQuAD scores (as evaluate / scikit-learn / seqeval
  define them).
- one module per task family (``text_classification``, ``token_classification``, ``question_answering``,
  ``generation``, ``perplexity``): a ``TaskEvaluation`` that encodes a batch, predicts and reduces to the
  metrics; ``optimum_int8.tasks`` registers each with its task.
- ``distributed``: shards, gathers and status checks under torch.distributed (no-ops in one process).
- ``evaluator``: ``TaskEvaluator``, the loop over batches.

A user's ``evaluate`` metric object, or any ``metric(predictions=..., references=...)`` callable,
replaces the built-in metric; it gets predictions and references in the format ``evaluate``'s metric
for that task expects.
"""

from .data import DATA_FILE_BUILDERS, load_eval_dataset, resolve_columns
from .distributed import DistributedError
from .metrics import (
    LOWER_IS_BETTER,
    ROUGE_TYPES,
    accuracy,
    entities,
    entity_scores,
    f1,
    higher_is_better,
    normalize_answer,
    rouge,
    squad_scores,
)
from .task_evaluation import DataError

# These come from the task registry, which imports the per-task modules of this package: load them on
# first use so that either import order works.
_FROM_EVALUATOR = ("TaskEvaluator", "normalize_task")
_FROM_TASKS = ("TASK_ALIASES", "TASK_METRICS")


def __getattr__(name):
    if name in _FROM_EVALUATOR:
        from . import evaluator

        return getattr(evaluator, name)
    if name in _FROM_TASKS:
        from .. import tasks

        return getattr(tasks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DATA_FILE_BUILDERS",
    "LOWER_IS_BETTER",
    "ROUGE_TYPES",
    "TASK_ALIASES",
    "TASK_METRICS",
    "DataError",
    "DistributedError",
    "TaskEvaluator",
    "accuracy",
    "entities",
    "entity_scores",
    "f1",
    "higher_is_better",
    "load_eval_dataset",
    "normalize_answer",
    "normalize_task",
    "resolve_columns",
    "rouge",
    "squad_scores",
]
