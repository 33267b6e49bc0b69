"""Evaluation data: a ``datasets.Dataset`` from a Dataset, a DatasetDict split or a local data file, and its columns."""

from pathlib import Path

DATA_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}


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
    try:
        dataset = datasets.load_dataset(DATA_FILE_BUILDERS[suffix], data_files=str(path), split="train", **kwargs)
    except Exception as error:  # datasets' builders raise their own errors (or StopIteration) on malformed files
        cause = error.__cause__ or error
        detail = " ".join(str(cause).split())[:200] or type(cause).__name__
        if "corresponds to no data" in detail:  # a csv/tsv file with a header line only
            raise ValueError(f"evaluation data file {path} has no rows.") from error
        raise ValueError(f"evaluation data file {path} is not a readable {suffix[1:]} file: {detail}") from error
    if len(dataset) == 0:
        raise ValueError(f"evaluation data file {path} has no rows (columns: {dataset.column_names}).")
    return dataset



def resolve_columns(dataset, task: str, columns: dict[str, str] | None = None) -> dict[str, str]:
    """Map each column role of ``task`` to a dataset column: given ones are checked, the rest inferred.

    The roles, and the names tried for each, are the task's ``TaskEvaluation.columns``.
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
                raise KeyError(f"columns[{role!r}] = {columns[role]!r} is not a dataset column; columns are {available}.")
            resolved[role] = columns[role]
            continue
        found = next((name for name in names if name in available), None)
        if found is None and role not in evaluation.optional_columns:
            raise KeyError(
                f"no column for {role!r} (task {task!r}): tried {list(names)}, the dataset has {available}. "
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
