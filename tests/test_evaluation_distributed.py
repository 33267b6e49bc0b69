"""Evaluation on real 2-process gloo groups equals one process: every task, uneven shards, failing and dying ranks."""

import copy
import json
import time

import datasets
import pytest
import torch

import rank_group
from conftest import TINY_ARCHS
from optimum_int8 import Int8Config, quantize_model
from optimum_int8.evaluation import DataError, DistributedError, TaskEvaluator, distributed
from word_tokenizer import WORDS, word_tokenizer

TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def sentences(count: int, length: int = 5, seed: int = 0) -> list[str]:
    """Distinct word sequences of varying length (so batches pad), the same in every process."""
    generator = torch.Generator().manual_seed(seed)
    texts = []
    for index in range(count):
        size = 2 + (index * 3 + seed) % length
        words = [WORDS[int(i)] for i in torch.randint(0, len(WORDS), (size,), generator=generator)]
        texts.append(" ".join([f"w{index}", *words]))
    return texts


def agreement(predictions, references):
    """A user metric with two entries (so the evaluator must be told which one to use)."""
    return {"agree": sum(p == r for p, r in zip(predictions, references)) / len(references), "rows": len(references)}


def failing_metric(predictions, references):
    raise ValueError(f"this metric refuses {len(predictions)} predictions")


def classification(rows: int, batch_size: int, labels=None, int8=False, pairs=False, **kwargs):
    model = TINY_ARCHS["bert"].build()
    model.config.label2id = {f"l{i}": i for i in range(3)}  # string labels are mapped through it
    if int8:
        model = quantize_model(model, Int8Config())
    data = {"text": sentences(rows), "label": labels if labels is not None else [i % 3 for i in range(rows)]}
    if pairs:
        data["text_pair"] = sentences(rows, seed=1)
    evaluator = TaskEvaluator("text-classification", datasets.Dataset.from_dict(data), word_tokenizer(),
                              batch_size=batch_size, show_progress=False, **kwargs)
    return model, evaluator


def token_classification(rows: int, batch_size: int):
    model = TINY_ARCHS["bert_tokens"].build()
    model.config.id2label = dict(enumerate(TAGS))
    words = [text.split() for text in sentences(rows)]
    features = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                                  "ner_tags": datasets.Sequence(datasets.ClassLabel(names=TAGS))})
    tags = [[(i + j) % len(TAGS) for j in range(len(row))] for i, row in enumerate(words)]
    data = datasets.Dataset.from_dict({"tokens": words, "ner_tags": tags}, features=features)
    return model, TaskEvaluator("token-classification", data, word_tokenizer(), batch_size=batch_size, show_progress=False)


def question_answering(rows: int, batch_size: int):
    model = TINY_ARCHS["distilbert"].build()
    contexts = sentences(rows, length=9, seed=2)
    answers = [{"text": [context.split()[1]], "answer_start": [context.index(context.split()[1])]} for context in contexts]
    data = datasets.Dataset.from_dict({"question": sentences(rows, seed=3), "context": contexts, "answers": answers})
    return model, TaskEvaluator("question-answering", data, word_tokenizer(), batch_size=batch_size, show_progress=False)


def summarization(rows: int, batch_size: int, int8=False):
    model = TINY_ARCHS["bart"].build()
    if int8:
        model = quantize_model(model, Int8Config())
    data = datasets.Dataset.from_dict({"document": sentences(rows, length=8, seed=4), "summary": sentences(rows, seed=5)})
    return model, TaskEvaluator("summarization", data, word_tokenizer(), batch_size=batch_size, show_progress=False,
                                generation_kwargs={"max_new_tokens": 5, "do_sample": False})


def perplexity(rows: int, batch_size: int):
    model = TINY_ARCHS["gpt2"].build()
    data = datasets.Dataset.from_dict({"text": sentences(rows, length=7, seed=6)})
    return model, TaskEvaluator("causal-lm", data, word_tokenizer(), batch_size=batch_size, show_progress=False)


# name -> (builder, kwargs). Rows not divisible by ranks or batches throughout; "one-row" leaves rank 1 nothing.
SCENARIOS = {
    "text-classification": (classification, dict(rows=7, batch_size=2)),
    "text-classification-int8": (classification, dict(rows=9, batch_size=4, int8=True)),
    "text-classification-pairs-batch-1": (classification, dict(rows=7, batch_size=1, pairs=True)),
    "text-classification-user-metric": (classification, dict(rows=7, batch_size=2, metric=agreement, metric_key="agree")),
    "text-classification-one-row": (classification, dict(rows=1, batch_size=2)),
    "token-classification": (token_classification, dict(rows=7, batch_size=2)),
    "question-answering": (question_answering, dict(rows=7, batch_size=3)),
    "summarization": (summarization, dict(rows=5, batch_size=2)),
    "summarization-int8": (summarization, dict(rows=7, batch_size=2, int8=True)),
    "text-generation": (perplexity, dict(rows=7, batch_size=2)),
}
# A string label that is not in label2id, in row 6: rank 1's shard (batches 2-3 of 4).
BAD_LABEL = dict(rows=8, batch_size=2, labels=["l0", "l1", "l2", "l0", "l1", "l2", "nonsense", "l0"])


def build(name: str):
    builder, kwargs = SCENARIOS[name]
    return builder(**kwargs)


def _recording(evaluator, seen: list):
    """Record the rows this process predicts (each row's columns, as JSON)."""
    loop = copy.copy(evaluator.loop)
    predict = loop.predict

    def recording_predict(ev, model, rows):
        seen.extend(json.dumps(row, sort_keys=True) for row in rows)
        return predict(ev, model, rows)

    loop.predict = recording_predict
    evaluator.loop = loop


def _failure(call) -> dict:
    start = time.monotonic()
    try:
        call()
    except Exception as error:
        return {"type": type(error).__name__, "message": str(error), "seconds": time.monotonic() - start}
    return {"type": None, "message": "", "seconds": time.monotonic() - start}


def evaluate_everything():
    """Worker: every scenario, then the failures, on this rank."""
    out = {"rank": distributed.rank(), "world_size": distributed.world_size(), "scenarios": {}}
    for name in SCENARIOS:
        model, evaluator = build(name)
        seen = []
        _recording(evaluator, seen)
        metrics = evaluator.evaluate(model)
        rows = list(seen)
        out["scenarios"][name] = {"metrics": metrics, "rows": rows, "value": evaluator(model), "metric_name": evaluator.metric_name}
    model, evaluator = classification(**BAD_LABEL)
    out["bad_label"] = _failure(lambda: evaluator(model))
    model, evaluator = classification(rows=5, batch_size=2, metric=failing_metric)
    out["failing_metric"] = _failure(lambda: evaluator(model))
    model, evaluator = classification(rows=6 + distributed.rank(), batch_size=2)
    out["different_datasets"] = _failure(lambda: evaluator(model))
    # The group is still usable after the failures: a normal evaluation agrees again.
    model, evaluator = build("text-classification")
    out["after_failures"] = evaluator(model)
    return out


def die_on_rank_1():
    """Worker: rank 1 dies in the middle of its shard; rank 0 must not wait forever."""
    model, evaluator = classification(rows=8, batch_size=2)
    if distributed.rank() == 1:
        loop = copy.copy(evaluator.loop)
        loop.predict = lambda ev, model, rows: __import__("os")._exit(7)
        evaluator.loop = loop
    return _failure(lambda: evaluator(model))


@pytest.fixture(scope="module")
def two_ranks():
    return rank_group.results(rank_group.run_ranks(evaluate_everything, 2))


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_two_ranks_give_the_single_process_result(two_ranks, name):
    model, evaluator = build(name)
    single = evaluator.evaluate(model)
    for rank in two_ranks:
        assert rank["world_size"] == 2
        assert rank["scenarios"][name]["metrics"] == single  # exact: the same predictions, reduced once in row order
        assert rank["scenarios"][name]["value"] == single[evaluator.metric_name] == evaluator(model)
        assert rank["scenarios"][name]["metric_name"] == evaluator.metric_name


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_each_row_is_predicted_on_exactly_one_rank(two_ranks, name):
    _, evaluator = build(name)
    expected = [json.dumps(row, sort_keys=True) for row in evaluator._rows()]
    first, second = (rank["scenarios"][name]["rows"] for rank in two_ranks)
    assert first + second == expected  # contiguous shards, rank 0 first, nothing twice, nothing padded in
    if len(expected) >= 2 * evaluator.batch_size:
        assert first and second


def test_shards_are_contiguous_whole_batches_covering_each_item_once():
    for items in range(0, 12):
        for ranks in (1, 2, 3, 5):
            shards = [distributed.shard(items, rank, ranks) for rank in range(ranks)]
            assert [i for shard in shards for i in shard] == list(range(items))
            assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert [len(distributed.shard(7, rank, 2)) for rank in range(2)] == [3, 4]
    with pytest.raises(ValueError, match="rank 2 is not in a world of 2"):
        distributed.shard(7, 2, 2)


def test_a_rank_that_raises_makes_every_rank_raise_naming_it(two_ranks):
    for rank in two_ranks:
        failure = rank["bad_label"]
        assert failure["type"] == "DistributedError"
        assert "evaluating text-classification on 8 rows failed on rank 1 of 2" in failure["message"]
        assert "DataError: the evaluation dataset, row 6: label 'nonsense' (column 'label') is not in the model's label2id" \
            in failure["message"]
        assert "rows 4-7" in failure["message"]  # the failing rank's shard
        assert failure["seconds"] < rank_group.GROUP_TIMEOUT_SECONDS  # reported, not timed out
        assert rank["after_failures"] == rank["scenarios"]["text-classification"]["value"]


def test_a_metric_that_fails_on_rank_0_raises_on_every_rank(two_ranks):
    for rank in two_ranks:
        failure = rank["failing_metric"]
        assert failure["type"] == "DistributedError"
        assert "computing text-classification metrics failed on rank 0 of 2" in failure["message"]
        assert "this metric refuses 5 predictions" in failure["message"]


def test_ranks_that_read_different_datasets_are_told_so(two_ranks):
    for rank in two_ranks:
        failure = rank["different_datasets"]
        assert failure["type"] == "DistributedError"
        assert "the ranks read different datasets ([6, 7] rows on ranks 0-1)" in failure["message"]


def test_a_rank_that_dies_does_not_hang_the_others():
    start = time.monotonic()
    outcomes = rank_group.run_ranks(die_on_rank_1, 2, require_all=False)
    assert outcomes[1] is None  # it exited without reporting
    failure = outcomes[0]["result"]
    assert failure["type"] == "DistributedError", failure
    assert "evaluating text-classification on 8 rows: the collective failed on rank 0 of 2" in failure["message"]
    assert failure["seconds"] <= rank_group.GROUP_TIMEOUT_SECONDS + 10
    assert time.monotonic() - start < rank_group.RUN_TIMEOUT_SECONDS


def test_one_process_raises_the_original_error_and_needs_no_group():
    assert not distributed.is_distributed() and distributed.world_size() == 1 and distributed.is_main_process()
    model, evaluator = classification(**BAD_LABEL)
    with pytest.raises(DataError, match=r"row 6: label 'nonsense' \(column 'label'\) is not in the model's label2id"):
        evaluator(model)
    assert distributed.gather("x") == ["x"] and distributed.broadcast(3) == 3
    assert distributed.on_main_process(lambda: 4, what="x") == 4 and distributed.on_every_rank(lambda: 5, what="x") == [5]

    def boom():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom") as raised:
        distributed.on_main_process(boom, what="x")
    assert not isinstance(raised.value, DistributedError)


def test_joining_the_launchers_group_from_the_environment(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT", distributed.TIMEOUT_ENV):
        monkeypatch.delenv(name, raising=False)
    assert distributed.init_from_environment() is False  # one process: nothing to join
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.init_from_environment() is False
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match=r"WORLD_SIZE=2 but \['RANK', 'MASTER_ADDR', 'MASTER_PORT'\] are not set"):
        distributed.init_from_environment()
    assert distributed.timeout_from_environment().total_seconds() == distributed.DEFAULT_TIMEOUT_SECONDS
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "45")
    assert distributed.timeout_from_environment().total_seconds() == 45
    for bad in ("soon", "0"):
        monkeypatch.setenv(distributed.TIMEOUT_ENV, bad)
        with pytest.raises(ValueError, match=distributed.TIMEOUT_ENV):
            distributed.timeout_from_environment()
    assert not distributed.is_distributed()
