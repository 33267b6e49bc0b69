"""Task metrics and the evaluation loops that feed them, offline.

``TaskEvaluator(task, dataset, tokenizer)`` turns a ``datasets.Dataset`` (or a local json/jsonl/csv/tsv/
parquet file) into ``evaluator(model) -> float``: the callable the tuner hands to neural-compressor.
Built-in metrics per task:

- summarization / text2text-generation: ``rouge1``, ``rouge2``, ``rougeL``, ``rougeLsum`` computed as
  ``evaluate``'s rouge metric computes them (rouge_score scorer, bootstrap-aggregated mid F-measure;
  rougeLsum splits sentences on newlines), with stemming on as in transformers' summarization examples.
- text-classification: ``accuracy``, ``f1`` (binary for two labels, macro otherwise).
- token-classification: ``f1``, ``precision``, ``recall`` over entities (conlleval chunking) and ``accuracy``.
- question-answering: ``exact_match`` and ``f1`` (SQuAD answer normalisation), in percent like SQuAD.
- text-generation (causal LM): ``perplexity`` (lower is better) and ``loss``.

A user's ``evaluate`` metric object, or any ``metric(predictions=..., references=...)`` callable,
replaces the built-in metric; it gets predictions and references in the format ``evaluate``'s
metric for that task expects.
"""

import collections
import copy
import math
import re
import string
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

TASK_ALIASES = {
    "sequence-classification": "text-classification",
    "sentiment-analysis": "text-classification",
    "ner": "token-classification",
    "seq2seq-lm": "text2text-generation",
    "translation": "text2text-generation",
    "causal-lm": "text-generation",
    "perplexity": "text-generation",
}
TASK_METRICS = {
    "text-classification": ("accuracy", "f1"),
    "token-classification": ("f1", "precision", "recall", "accuracy"),
    "question-answering": ("f1", "exact_match"),
    "summarization": ("rougeLsum", "rouge1", "rouge2", "rougeL"),
    "text2text-generation": ("rougeLsum", "rouge1", "rouge2", "rougeL"),
    "text-generation": ("perplexity", "loss"),
}
LOWER_IS_BETTER = frozenset({"perplexity", "loss"})
# Column roles per task, each with the names tried (in order) when the caller does not give one.
COLUMN_CANDIDATES = {
    "text-classification": {
        "text": ("text", "sentence", "sentence1", "content", "review", "document"),
        "text_pair": ("text_pair", "sentence2"),
        "label": ("label", "labels", "sentiment"),
    },
    "token-classification": {"tokens": ("tokens", "words"), "tags": ("ner_tags", "tags", "labels", "pos_tags")},
    "question-answering": {"question": ("question",), "context": ("context",), "answers": ("answers", "answer")},
    "summarization": {
        "source": ("document", "article", "text", "source", "input", "dialogue"),
        "target": ("summary", "highlights", "target", "abstract", "output"),
    },
    "text-generation": {"text": ("text", "content", "document", "sentence")},
}
COLUMN_CANDIDATES["text2text-generation"] = COLUMN_CANDIDATES["summarization"]
OPTIONAL_COLUMNS = frozenset({"text_pair"})
DATA_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def normalize_task(task: str) -> str:
    task = TASK_ALIASES.get(task, task)
    if task not in TASK_METRICS:
        raise ValueError(f"task {task!r} has no built-in evaluation; supported tasks are {sorted(TASK_METRICS)}.")
    return task


def higher_is_better(metric_name: str) -> bool:
    """Whether a larger value of the named metric is better (perplexity and loss: no)."""
    return metric_name not in LOWER_IS_BETTER


# ---------------------------------------------------------------------------------------------- data


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
    kwargs = {"delimiter": "\t"} if suffix == ".tsv" else {}
    return datasets.load_dataset(DATA_FILE_BUILDERS[suffix], data_files=str(path), split="train", **kwargs)


def resolve_columns(dataset, task: str, columns: dict[str, str] | None = None) -> dict[str, str]:
    """Map each column role of ``task`` to a dataset column: given ones are checked, the rest inferred."""
    candidates = COLUMN_CANDIDATES[task]
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
        if found is None and role not in OPTIONAL_COLUMNS:
            raise KeyError(
                f"no column for {role!r} (task {task!r}): tried {list(names)}, the dataset has {available}. "
                f"Pass columns={{{role!r}: '<column name>'}}."
            )
        if found is not None:
            resolved[role] = found
    return resolved


# ------------------------------------------------------------------------------------------- metrics


def rouge(
    predictions: Sequence[str],
    references: Sequence[str] | Sequence[Sequence[str]],
    rouge_types: Sequence[str] = ROUGE_TYPES,
    use_stemmer: bool = True,
    use_aggregator: bool = True,
    bootstrap_seed: int | None = 0,
) -> dict:
    """ROUGE F-measures exactly as ``evaluate.load("rouge").compute(...)`` returns them.

    Like evaluate: rouge_score's ``RougeScorer`` per pair (``score_multi`` for lists of references),
    then the mid F-measure of rouge_score's ``BootstrapAggregator`` (or per-example lists without
    aggregation). rougeLsum treats newlines as sentence boundaries: put one sentence per line.
    The bootstrap draws from numpy's global generator; evaluate seeds it with the metric module's
    ``seed`` around ``compute``, and ``bootstrap_seed`` plays that role here (same seed, same numbers;
    the caller's generator state is restored). A fixed seed also makes fp32 and int8 outputs resample
    the same examples, so tuning compares like with like. ``None`` uses the generator as it is.
    """
    from rouge_score import rouge_scorer, scoring

    if len(predictions) != len(references):
        raise ValueError(f"rouge: {len(predictions)} predictions but {len(references)} references.")
    if not predictions:
        raise ValueError("rouge: no predictions to score.")
    scorer = rouge_scorer.RougeScorer(rouge_types=list(rouge_types), use_stemmer=use_stemmer)
    multi_reference = isinstance(references[0], (list, tuple))
    scores = [
        scorer.score_multi(ref, pred) if multi_reference else scorer.score(ref, pred)
        for ref, pred in zip(references, predictions)
    ]
    if not use_aggregator:
        return {key: [score[key].fmeasure for score in scores] for key in scores[0]}
    aggregator = scoring.BootstrapAggregator()
    for score in scores:
        aggregator.add_scores(score)
    state = np.random.get_state()
    if bootstrap_seed is not None:
        np.random.seed(bootstrap_seed)
    try:
        aggregated = aggregator.aggregate()
    finally:
        if bootstrap_seed is not None:
            np.random.set_state(state)
    return {key: value.mid.fmeasure for key, value in aggregated.items()}


def accuracy(predictions: Sequence[int], references: Sequence[int]) -> float:
    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"accuracy: {len(predictions)} predictions for {len(references)} references.")
    return sum(int(p == r) for p, r in zip(predictions, references)) / len(references)


def _f1_from_counts(true_positive: int, predicted: int, actual: int) -> tuple[float, float, float]:
    precision = true_positive / predicted if predicted else 0.0
    recall = true_positive / actual if actual else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def f1(predictions: Sequence[int], references: Sequence[int], average: str = "binary", pos_label: int = 1) -> float:
    """F1 as scikit-learn (and evaluate's f1) defines it: ``binary`` for ``pos_label``, or ``macro``."""
    if average == "binary":
        labels = [pos_label]
    elif average == "macro":
        labels = sorted(set(references) | set(predictions))
    else:
        raise ValueError(f"f1: average must be 'binary' or 'macro', got {average!r}")
    scores = []
    for label in labels:
        true_positive = sum(1 for p, r in zip(predictions, references) if p == r == label)
        predicted = sum(1 for p in predictions if p == label)
        actual = sum(1 for r in references if r == label)
        scores.append(_f1_from_counts(true_positive, predicted, actual)[2])
    return sum(scores) / len(scores)


def _split_tag(tag: str) -> tuple[str, str]:
    if tag == "O" or "-" not in tag:
        return ("O", "") if tag == "O" else (tag, "")
    prefix, entity_type = tag.split("-", 1)
    return prefix, entity_type


def _chunk_ends(prev_prefix, prefix, prev_type, entity_type) -> bool:
    if prev_prefix in ("E", "S"):
        return True
    if prev_prefix in ("B", "I") and prefix in ("B", "S", "O"):
        return True
    return prev_prefix != "O" and prev_type != entity_type


def _chunk_starts(prev_prefix, prefix, prev_type, entity_type) -> bool:
    if prefix in ("B", "S"):
        return True
    if prev_prefix in ("E", "S", "O") and prefix in ("I", "E"):
        return True
    return prefix != "O" and prev_type != entity_type


def entities(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """(type, start, end) chunks of an IOB1/IOB2/IOBES tag sequence, by the conlleval rules (seqeval's default)."""
    chunks = set()
    prev_prefix, prev_type, start = "O", "", None
    for index, tag in enumerate([*tags, "O"]):
        prefix, entity_type = _split_tag(tag)
        if start is not None and _chunk_ends(prev_prefix, prefix, prev_type, entity_type):
            chunks.add((prev_type, start, index - 1))
            start = None
        if _chunk_starts(prev_prefix, prefix, prev_type, entity_type):
            start = index
        prev_prefix, prev_type = prefix, entity_type
    return chunks


def entity_scores(predictions: Sequence[Sequence[str]], references: Sequence[Sequence[str]]) -> dict:
    """Micro entity precision/recall/F1 and token accuracy over tag sequences (seqeval's default mode)."""
    true_positive = predicted = actual = correct_tokens = total_tokens = 0
    for pred_tags, ref_tags in zip(predictions, references):
        if len(pred_tags) != len(ref_tags):
            raise ValueError(f"token classification: {len(pred_tags)} predicted tags for {len(ref_tags)} reference tags.")
        pred_chunks, ref_chunks = entities(pred_tags), entities(ref_tags)
        true_positive += len(pred_chunks & ref_chunks)
        predicted += len(pred_chunks)
        actual += len(ref_chunks)
        correct_tokens += sum(int(p == r) for p, r in zip(pred_tags, ref_tags))
        total_tokens += len(ref_tags)
    precision, recall, f1_score = _f1_from_counts(true_positive, predicted, actual)
    return {"precision": precision, "recall": recall, "f1": f1_score, "accuracy": correct_tokens / max(total_tokens, 1)}


def normalize_answer(text: str) -> str:
    """SQuAD answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _token_f1(prediction: str, answer: str) -> float:
    pred_tokens, answer_tokens = normalize_answer(prediction).split(), normalize_answer(answer).split()
    common = sum((collections.Counter(pred_tokens) & collections.Counter(answer_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(answer_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> dict:
    """SQuAD v1 exact match and F1 in percent, each the max over an example's gold answers."""
    if len(predictions) != len(answers) or not predictions:
        raise ValueError(f"squad: {len(predictions)} predictions for {len(answers)} answer lists.")
    exact = f1_total = 0.0
    for prediction, gold in zip(predictions, answers):
        exact += max(float(normalize_answer(prediction) == normalize_answer(answer)) for answer in gold)
        f1_total += max(_token_f1(prediction, answer) for answer in gold)
    return {"exact_match": 100.0 * exact / len(predictions), "f1": 100.0 * f1_total / len(predictions)}


# ------------------------------------------------------------------------------------------ evaluator


def _batches(items: list, batch_size: int):
    for start in range(0, len(items), batch_size):
        yield items[start : start + batch_size]


def _model_device(model) -> torch.device:
    return next(model.parameters()).device if any(True for _ in model.parameters()) else torch.device("cpu")


class TaskEvaluator:
    """``evaluator(model) -> float``: the chosen metric of ``task`` on ``dataset``, with a tqdm bar.

    Args:
        task: one of ``TASK_METRICS`` (aliases such as ``"causal-lm"`` accepted).
        dataset: a ``datasets.Dataset`` or a path to a json/jsonl/csv/tsv/parquet file.
        tokenizer: the model's tokenizer (a fast one for token classification and QA).
        metric: a built-in metric name of the task (default: the task's first), or an ``evaluate``
            metric object / callable ``metric(predictions=..., references=...)``.
        metric_key: which entry of a user metric's result dict to use (needed when it has several).
        columns: ``{role: column}`` overrides; roles are in ``COLUMN_CANDIDATES[task]``.
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
        dataset = load_eval_dataset(dataset)
        if max_samples is not None:
            dataset = dataset.select(range(min(max_samples, len(dataset))))
        if len(dataset) == 0:
            raise ValueError("the evaluation dataset is empty.")
        self.dataset = dataset
        self.columns = resolve_columns(dataset, self.task, columns)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        self.generation_kwargs = dict(generation_kwargs or {})
        self.label_names = list(label_names) if label_names is not None else None
        self.show_progress = show_progress
        self.user_metric = None
        self.metric_key = metric_key
        if metric is None or isinstance(metric, str):
            self.metric_name = metric or TASK_METRICS[self.task][0]
            if self.metric_name not in TASK_METRICS[self.task]:
                raise ValueError(
                    f"metric {self.metric_name!r} is not a built-in metric of task {self.task!r}; "
                    f"choose from {TASK_METRICS[self.task]} or pass an evaluate metric object."
                )
        else:
            if self.task == "text-generation":
                raise ValueError("perplexity is computed from the model's logits; a user metric cannot replace it.")
            if not callable(getattr(metric, "compute", None)) and not callable(metric):
                raise TypeError(f"metric must be a name, an evaluate metric object or a callable, got {type(metric).__name__}")
            self.user_metric = metric
            self.metric_name = metric_key or getattr(metric, "name", None) or getattr(metric, "__name__", "metric")
        if tokenizer is None:
            raise ValueError(f"task {self.task!r} needs the model's tokenizer to build inputs.")
        if self.task == "text-generation" and (tokenizer.pad_token is None or tokenizer.padding_side != "right"):
            # Batches need a pad token, and right padding keeps each text at the positions it has when run
            # alone (decoder-only models number positions from the first token); padding is masked out.
            self.tokenizer = copy.deepcopy(tokenizer)
            self.tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
            self.tokenizer.padding_side = "right"
        if self.task in ("token-classification", "question-answering") and not getattr(tokenizer, "is_fast", False):
            raise ValueError(f"task {self.task!r} needs a fast tokenizer (word ids / offsets); got {type(tokenizer).__name__}.")

    @property
    def higher_is_better(self) -> bool:
        return self.user_metric is not None or higher_is_better(self.metric_name)

    def __call__(self, model) -> float:
        return self.evaluate(model)[self.metric_name]

    def evaluate(self, model) -> dict[str, float]:
        """All metrics of the task (or the user metric's result) for ``model``."""
        model.eval()
        with torch.inference_mode():
            if self.task == "text-generation":
                return self._perplexity(model)
            predictions, references = self._predictors[self.task](model)
        if self.user_metric is not None:
            return self._user_metric_result(predictions, references)
        return self._builtin_metrics(model, predictions, references)

    def _progress(self, iterable, total: int, what: str):
        return tqdm(iterable, total=total, desc=f"Evaluating {what}", unit="batch", leave=False, disable=not self.show_progress)

    def _rows(self) -> list[dict]:
        return self.dataset.select_columns(list(self.columns.values())).to_list()

    def _column(self, row: dict, role: str):
        return row[self.columns[role]]

    # -- text classification
    def _label_id(self, model, label):
        if isinstance(label, str):
            label2id = getattr(model.config, "label2id", None) or {}
            if label not in label2id:
                raise KeyError(f"label {label!r} is not in model.config.label2id {label2id}.")
            return int(label2id[label])
        return int(label)

    def _predict_text_classification(self, model):
        rows, device = self._rows(), _model_device(model)
        predictions, references = [], []
        for batch in self._progress(_batches(rows, self.batch_size), math.ceil(len(rows) / self.batch_size), "text classification"):
            texts = [self._column(row, "text") for row in batch]
            pairs = [self._column(row, "text_pair") for row in batch] if "text_pair" in self.columns else None
            inputs = self.tokenizer(texts, pairs, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
            logits = model(**inputs.to(device)).logits
            predictions.extend(logits.argmax(-1).tolist())
            references.extend(self._label_id(model, self._column(row, "label")) for row in batch)
        return predictions, references

    # -- token classification
    def _tag_names(self, model) -> list[str]:
        if self.label_names is not None:
            return self.label_names
        feature = self.dataset.features[self.columns["tags"]]
        names = getattr(getattr(feature, "feature", None), "names", None)
        if names:
            return list(names)
        id2label = getattr(model.config, "id2label", None) or {}
        return [id2label[i] for i in sorted(id2label)]

    def _predict_token_classification(self, model):
        rows, device, names = self._rows(), _model_device(model), None
        id2label = model.config.id2label
        outside = "O" if "O" in id2label.values() else id2label[0]
        predictions, references = [], []
        for batch in self._progress(_batches(rows, self.batch_size), math.ceil(len(rows) / self.batch_size), "token classification"):
            words = [list(self._column(row, "tokens")) for row in batch]
            inputs = self.tokenizer(words, is_split_into_words=True, padding=True, truncation=True,
                                    max_length=self.max_length, return_tensors="pt")
            label_ids = model(**inputs.to(device)).logits.argmax(-1).tolist()
            for index, row in enumerate(batch):
                word_tags = [outside] * len(words[index])
                seen = set()
                for position, word_id in enumerate(inputs.word_ids(index)):
                    if word_id is not None and word_id not in seen:
                        seen.add(word_id)
                        word_tags[word_id] = id2label[label_ids[index][position]]
                predictions.append(word_tags)
                tags = list(self._column(row, "tags"))
                if tags and not isinstance(tags[0], str):
                    names = names or self._tag_names(model)
                    tags = [names[int(tag)] for tag in tags]
                references.append(tags)
        return predictions, references

    # -- question answering
    def _answer_texts(self, answers) -> list[str]:
        if isinstance(answers, str):
            return [answers]
        if isinstance(answers, dict):
            return list(answers["text"]) or [""]
        return list(answers)

    def _best_span(self, start_logits, end_logits, context_mask, max_answer_tokens: int = 30):
        scores = start_logits[:, None] + end_logits[None, :]
        length = torch.arange(len(start_logits))
        allowed = (length[None, :] >= length[:, None]) & (length[None, :] - length[:, None] < max_answer_tokens)
        allowed &= context_mask[:, None] & context_mask[None, :]
        scores = scores.masked_fill(~allowed, float("-inf"))
        flat = int(scores.argmax())
        return divmod(flat, scores.shape[1])

    def _predict_question_answering(self, model):
        rows, device = self._rows(), _model_device(model)
        predictions, references = [], []
        for batch in self._progress(_batches(rows, self.batch_size), math.ceil(len(rows) / self.batch_size), "question answering"):
            questions = [self._column(row, "question") for row in batch]
            contexts = [self._column(row, "context") for row in batch]
            inputs = self.tokenizer(questions, contexts, padding=True, truncation="only_second", max_length=self.max_length,
                                    return_offsets_mapping=True, return_tensors="pt")
            offsets = inputs.pop("offset_mapping")
            outputs = model(**inputs.to(device))
            for index, row in enumerate(batch):
                context_mask = torch.tensor([sid == 1 for sid in inputs.sequence_ids(index)])
                start, end = self._best_span(outputs.start_logits[index].float().cpu(), outputs.end_logits[index].float().cpu(), context_mask)
                predictions.append(contexts[index][int(offsets[index][start][0]) : int(offsets[index][end][1])])
                references.append(self._answer_texts(self._column(row, "answers")))
        return predictions, references

    # -- summarization / text2text
    def _generate(self, model):
        rows, device = self._rows(), _model_device(model)
        predictions, references = [], []
        generation_kwargs = dict(self.generation_kwargs)
        for batch in self._progress(_batches(rows, self.batch_size), math.ceil(len(rows) / self.batch_size), "generation"):
            inputs = self.tokenizer([self._column(row, "source") for row in batch], padding=True, truncation=True,
                                    max_length=self.max_length, return_tensors="pt")
            generated = model.generate(**inputs.to(device), **generation_kwargs)
            predictions.extend(text.strip() for text in self.tokenizer.batch_decode(generated, skip_special_tokens=True))
            references.extend(self._column(row, "target") for row in batch)
        return predictions, references

    @property
    def _predictors(self) -> dict[str, Callable]:
        return {
            "text-classification": self._predict_text_classification,
            "token-classification": self._predict_token_classification,
            "question-answering": self._predict_question_answering,
            "summarization": self._generate,
            "text2text-generation": self._generate,
        }

    # -- causal LM perplexity
    def _perplexity(self, model) -> dict[str, float]:
        rows, device = self._rows(), _model_device(model)
        total_nll, total_tokens = 0.0, 0
        for batch in self._progress(_batches(rows, self.batch_size), math.ceil(len(rows) / self.batch_size), "perplexity"):
            inputs = self.tokenizer([self._column(row, "text") for row in batch], padding=True, truncation=True,
                                    max_length=self.max_length, return_tensors="pt").to(device)
            logits = model(**inputs).logits[:, :-1].float()
            targets = inputs["input_ids"][:, 1:]
            mask = inputs["attention_mask"][:, 1:].bool() & inputs["attention_mask"][:, :-1].bool()
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
            total_nll += float(nll[mask].sum())
            total_tokens += int(mask.sum())
        if total_tokens == 0:
            raise ValueError("perplexity: the texts produced no token to predict (each needs at least two tokens).")
        loss = total_nll / total_tokens
        return {"perplexity": math.exp(loss), "loss": loss}

    # -- metrics
    def _builtin_metrics(self, model, predictions, references) -> dict[str, float]:
        if self.task == "text-classification":
            num_labels = max(model.config.num_labels, 2)
            return {
                "accuracy": accuracy(predictions, references),
                "f1": f1(predictions, references, average="binary" if num_labels == 2 else "macro"),
            }
        if self.task == "token-classification":
            return entity_scores(predictions, references)
        if self.task == "question-answering":
            return squad_scores(predictions, references)
        return rouge(predictions, references)

    def _evaluate_format(self, predictions, references):
        """Predictions/references as evaluate's metric for this task takes them (squad: dicts with ids)."""
        if self.task != "question-answering":
            return predictions, references
        ids = [str(i) for i in range(len(predictions))]
        return (
            [{"id": i, "prediction_text": p} for i, p in zip(ids, predictions)],
            [{"id": i, "answers": {"text": a, "answer_start": [0] * len(a)}} for i, a in zip(ids, references)],
        )

    def _user_metric_result(self, predictions, references) -> dict[str, float]:
        predictions, references = self._evaluate_format(predictions, references)
        compute = getattr(self.user_metric, "compute", self.user_metric)
        result = compute(predictions=predictions, references=references)
        if not isinstance(result, dict):
            return {self.metric_name: float(result)}
        if self.metric_key is None:
            if len(result) != 1:
                raise ValueError(f"the metric returned {sorted(result)}; pass metric_key=... to choose the one to tune on.")
            self.metric_key = self.metric_name = next(iter(result))
        if self.metric_key not in result:
            raise KeyError(f"metric_key {self.metric_key!r} is not in the metric's result {sorted(result)}.")
        return {key: float(value) for key, value in result.items() if isinstance(value, (int, float, np.floating))}

    def calibration_inputs(self, num_samples: int, batch_size: int | None = None) -> list[dict]:
        """Model inputs (tokenized batches) from the first ``num_samples`` rows, for sensitivity measurement.

        Seq2seq batches carry ``labels`` so that the decoder runs on the reference text.
        """
        rows = self._rows()[:num_samples]
        batches = []
        for batch in _batches(rows, batch_size or self.batch_size):
            kwargs = dict(padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
            if self.task == "text-classification":
                pairs = [self._column(row, "text_pair") for row in batch] if "text_pair" in self.columns else None
                inputs = self.tokenizer([self._column(row, "text") for row in batch], pairs, **kwargs)
            elif self.task == "token-classification":
                inputs = self.tokenizer([list(self._column(row, "tokens")) for row in batch], is_split_into_words=True, **kwargs)
            elif self.task == "question-answering":
                kwargs["truncation"] = "only_second"
                inputs = self.tokenizer([self._column(row, "question") for row in batch],
                                        [self._column(row, "context") for row in batch], **kwargs)
            elif self.task == "text-generation":
                inputs = self.tokenizer([self._column(row, "text") for row in batch], **kwargs)
            else:
                inputs = self.tokenizer([self._column(row, "source") for row in batch],
                                        text_target=[self._column(row, "target") for row in batch], **kwargs)
                inputs["labels"] = inputs["labels"].masked_fill(inputs["labels"] == self.tokenizer.pad_token_id, -100)
            batches.append(dict(inputs))
        return batches
