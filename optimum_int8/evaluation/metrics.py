"""The task metrics, as the field's libraries define them, computed on gathered predictions.

- ``rouge``: ``evaluate``'s rouge metric (rouge_score's scorer, bootstrap-aggregated mid F-measure).
- ``accuracy`` and ``f1``: scikit-learn's definitions (binary for ``pos_label``, or macro).
- ``entity_scores``: seqeval's default mode (conlleval chunking), micro over entities, plus token accuracy.
- ``squad_scores``: SQuAD v1 exact match and F1 with its answer normalisation, in percent.

They are implemented here rather than loaded with ``evaluate.load(name)`` because that fetches the
metric's script from the Hub on first use, and evaluation must run offline; ``rouge`` is tested
against an ``evaluate`` metric loaded from a local script. A user's ``evaluate`` metric object
replaces them in ``TaskEvaluator(metric=...)``.
"""

import collections
import re
import string
from collections.abc import Sequence

import numpy as np

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
LOWER_IS_BETTER = frozenset({"perplexity", "loss"})


def higher_is_better(metric_name: str) -> bool:
    """Whether a larger value of the named metric is better (perplexity and loss: no)."""
    return metric_name not in LOWER_IS_BETTER


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


