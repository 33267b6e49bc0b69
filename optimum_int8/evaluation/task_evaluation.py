"""``TaskEvaluation``: what one task's evaluation does with a batch of rows.

A task encodes a batch of dataset rows into model inputs, predicts from the model's outputs (one
prediction per row, or one per batch for corpus statistics such as perplexity), reads each row's
reference, and reduces the predictions and references of all rows to its metrics. ``TaskEvaluator``
runs the batches (sharded over ranks under torch.distributed), gathers what ``predict`` and
``references`` returned in the original order and calls ``reduce`` once.

A batch's predictions depend only on that batch's rows: batches are never re-formed across ranks, so
padding and dynamic int8 activation scales (computed per batch tensor) are the same as in one process.
"""

from collections.abc import Sequence

import torch


def model_device(model) -> torch.device:
    return next(model.parameters()).device if any(True for _ in model.parameters()) else torch.device("cpu")


class DataError(ValueError):
    """A value of the evaluation data that its task cannot use (a missing label, a label the model does not have)."""

class TaskEvaluation:
    """Base class; subclasses set the class attributes and implement ``encode``, ``predict`` and ``reduce``.

    Attributes:
        metrics: the built-in metrics, the default first.
        columns: ``{role: column names tried, in order}``.
        column_kinds: ``{role: what its values are}``, a kind of ``data.VALUE_KINDS`` ("text", "label", ...),
            checked on every row before the model runs.
        optional_columns: roles that may be absent.
        needs_fast_tokenizer: the task reads word ids or offsets.
        accepts_user_metric: whether an ``evaluate`` metric / callable may replace the built-in metrics.
    """

    metrics: tuple[str, ...] = ()
    columns: dict[str, tuple[str, ...]] = {}
    column_kinds: dict[str, str] = {}
    optional_columns: frozenset[str] = frozenset()
    needs_fast_tokenizer = False
    accepts_user_metric = True

    def prepare_tokenizer(self, tokenizer):
        """The tokenizer the task encodes with (a task may need a copy with other padding)."""
        return tokenizer

    def encode(self, evaluator, rows: list[dict]):
        """Model inputs (a tokenizer ``BatchEncoding``) for a batch of rows."""
        raise NotImplementedError

    def calibration_inputs(self, evaluator, rows: list[dict]) -> dict:
        """Model inputs for sensitivity measurement (by default the evaluation inputs)."""
        return dict(self.encode(evaluator, rows))

    def predict(self, evaluator, model, rows: list[dict]) -> list:
        """Predictions for a batch of rows: one per row (or one per batch where the metric is a corpus sum)."""
        raise NotImplementedError

    def references(self, evaluator, model, rows: list[dict]) -> list:
        """The reference of each row, in the form ``reduce`` takes; a ``DataError`` naming the column
        for a value the model cannot be scored on (the evaluator adds the file and the row)."""
        return []

    def reduce(self, evaluator, model, predictions: list, references: list) -> dict[str, float]:
        """Every built-in metric from the predictions and references of all rows, in row order."""
        raise NotImplementedError

    def evaluate_format(self, predictions: list, references: list) -> tuple[Sequence, Sequence]:
        """Predictions and references as ``evaluate``'s metric for this task takes them."""
        return predictions, references
