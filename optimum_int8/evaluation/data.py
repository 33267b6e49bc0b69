"""Evaluation data: a ``datasets.Dataset`` from a Dataset, a DatasetDict split or a local data file, its columns,
and the checks of their values (each error names the file, the row and the column)."""

import logging
from pathlib import Path

from .task_evaluation import DataError

DATA_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}


def _is_text(value) -> bool:
    return isinstance(value, str)


def _is_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_label(value) -> bool:
    return _is_text(value) or _is_id(value) or (isinstance(value, float) and value.is_integer())


def _is_answers(value) -> bool:
    if isinstance(value, dict):
        value = value.get("text")
    return _is_text(value) or (isinstance(value, (list, tuple)) and all(map(_is_text, value)))


# What a task's column role holds (``TaskEvaluation.column_kinds``): a test of a value and what it should be.
VALUE_KINDS = {
    "text": (_is_text, "a string"),
    "words": (lambda value: isinstance(value, (list, tuple)) and all(map(_is_text, value)), "a list of words (strings)"),
    "tags": (lambda value: isinstance(value, (list, tuple)) and all(_is_text(t) or _is_id(t) for t in value),
             "a list of tags (strings or integer ids)"),
    "label": (_is_label, "a label (a string or an integer id)"),
    "answers": (_is_answers, "answers (a string, a list of strings or a dict with a 'text' list)"),
}


def source_name(source) -> str:
    """How errors name the evaluation data: its file, or the in-memory dataset."""
    if isinstance(source, (str, Path)):
        return f"evaluation data {Path(source).expanduser()}"
    return "the evaluation dataset"


def check_values(rows: list[dict], columns: dict[str, str], kinds: dict[str, str], source: str) -> None:
    """Every row's value of each column role is of the role's kind, or a DataError naming the row and column."""
    for index, row in enumerate(rows):
        for role, column in columns.items():
            accepts, expected = VALUE_KINDS[kinds[role]]
            value = row[column]
            if not accepts(value):
                shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
                raise DataError(f"{source}, row {index}: column {column!r} holds {shown}, not {expected}.")


def load_eval_dataset(source, split: str | None = None):
    """A ``datasets.Dataset`` from a Dataset, a DatasetDict (with ``split``) or a local data file."""
    import datasets

    if isinstance(source, datasets.Dataset):
        return source
    if isinstance(source, datasets.DatasetDict):
        if split is None:
            raise ValueError(f"got a DatasetDict with splits {list(source)}; pass split=... to pick one.")
        if split not in source:
            raise KeyError(f"split {split!r} is not in the DatasetDict; it has {list(source)}.")
        return source[split]
    if not isinstance(source, (str, Path)):
        raise TypeError(f"eval data must be a datasets.Dataset or a path to a data file, got {type(source).__name__}")
    path = Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"evaluation data file {path} does not exist.")
    suffix = path.suffix.lower()
    if suffix not in DATA_FILE_BUILDERS:
        raise ValueError(f"{path}: unsupported data file type {suffix!r}; use one of {sorted(DATA_FILE_BUILDERS)}.")
    if path.stat().st_size == 0:
        raise ValueError(f"evaluation data file {path} is empty (0 bytes).")
    kwargs = {"delimiter": "\t"} if suffix == ".tsv" else {}
    builder_logger = logging.getLogger("datasets")
    level = builder_logger.level
    builder_logger.setLevel(logging.CRITICAL)  # a malformed file is logged there too; the error below says it once
    try:
        dataset = datasets.load_dataset(DATA_FILE_BUILDERS[suffix], data_files=str(path), split="train", **kwargs)
    except Exception as error:  # datasets' builders raise their own errors (or StopIteration) on malformed files
        cause = error.__cause__ or error
        detail = " ".join(str(cause).split())[:200] or type(cause).__name__
        if "corresponds to no data" in detail:  # a csv/tsv file with a header line only
            raise ValueError(f"evaluation data file {path} has no rows.") from error
        raise ValueError(f"evaluation data file {path} is not a readable {suffix[1:]} file: {detail}") from error
    finally:
        builder_logger.setLevel(level)
    if len(dataset) == 0:
        raise ValueError(f"evaluation data file {path} has no rows (columns: {dataset.column_names}).")
    return dataset



def resolve_columns(dataset, task: str, columns: dict[str, str] | None = None,
                    source: str = "the evaluation dataset") -> dict[str, str]:
    """Map each column role of ``task`` to a dataset column: given ones are checked, the rest inferred.

    The roles, and the names tried for each, are the task's ``TaskEvaluation.columns``; errors name ``source``.
    """
    from ..tasks import evaluation_for

    evaluation = evaluation_for(task)
    candidates = evaluation.columns
    columns = dict(columns or {})
    unknown = sorted(set(columns) - set(candidates))
    if unknown:
        raise ValueError(f"columns {unknown} are not roles of task {task!r}; its roles are {sorted(candidates)}.")
    available = list(dataset.column_names)
    resolved = {}
    for role, names in candidates.items():
        if role in columns:
            if columns[role] not in available:
                raise KeyError(f"{source}: columns[{role!r}] = {columns[role]!r} is not one of its columns {available}.")
            resolved[role] = columns[role]
            continue
        found = next((name for name in names if name in available), None)
        if found is None and role not in evaluation.optional_columns:
            raise KeyError(
                f"{source} has no column for {role!r} (task {task!r}): tried {list(names)}, it has {available}. "
                f"Pass columns={{{role!r}: '<column name>'}}."
            )
        if found is not None:
            resolved[role] = found
    return resolved


def batches(items: list, batch_size: int) -> list[list]:
    """``items`` in consecutive batches of ``batch_size`` (the last one shorter)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return [items[start : start + batch_size] for start in range(0, len(items), batch_size)]
