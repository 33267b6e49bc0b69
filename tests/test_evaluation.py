"""Built-in metrics against rouge_score / evaluate, data loading, and the task evaluation loops on tiny models."""

import json
import math

import datasets
import numpy as np
import pytest
import torch
from rouge_score import rouge_scorer, scoring

from conftest import TINY_ARCHS
from optimum_int8 import evaluation
from optimum_int8.evaluation import DataError, TaskEvaluator
from optimum_int8.tasks import EVALUATED_TASKS
from word_tokenizer import word_tokenizer

PREDICTIONS = [
    "The cats were sitting on the mats.\nThey slept.",
    "A dog runs home quickly",
    "nothing in common here",
    "Running runners ran.\nThe end.",
]
REFERENCES = [
    "The cat sat on the mat.\nIt slept all day.",
    "the dog ran home",
    "completely different words",
    "The runner is running.\nEnd of story.",
]

LOCAL_ROUGE_SCRIPT = '''
import datasets
import evaluate
from rouge_score import rouge_scorer, scoring


class LocalRouge(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="ROUGE via rouge_score, aggregated with its BootstrapAggregator",
            citation="",
            inputs_description="predictions and references: lists of strings",
            features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, use_stemmer=True):
        scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=use_stemmer)
        aggregator = scoring.BootstrapAggregator()
        for reference, prediction in zip(references, predictions):
            aggregator.add_scores(scorer.score(reference, prediction))
        return {key: value.mid.fmeasure for key, value in aggregator.aggregate().items()}
'''


def test_rouge_per_example_matches_rouge_score_with_stemming():
    scorer = rouge_scorer.RougeScorer(list(evaluation.ROUGE_TYPES), use_stemmer=True)
    ours = evaluation.rouge(PREDICTIONS, REFERENCES, use_aggregator=False)
    for index, (prediction, reference) in enumerate(zip(PREDICTIONS, REFERENCES)):
        expected = scorer.score(reference, prediction)
        for key in evaluation.ROUGE_TYPES:
            assert ours[key][index] == expected[key].fmeasure
    # Stemming matters here ("running"/"runner"), and rougeLsum splits on newlines unlike rougeL.
    unstemmed = evaluation.rouge(PREDICTIONS, REFERENCES, use_aggregator=False, use_stemmer=False)
    assert unstemmed["rouge1"][3] < ours["rouge1"][3]
    swapped = evaluation.rouge(["cat sat\ndog ran"], ["dog ran\ncat sat"], use_aggregator=False)
    assert swapped["rougeL"] == [0.5] and swapped["rougeLsum"] == [1.0]


def test_rouge_aggregate_is_the_bootstrap_mid_with_the_same_seed_and_leaves_numpy_state_alone():
    scorer = rouge_scorer.RougeScorer(list(evaluation.ROUGE_TYPES), use_stemmer=True)
    aggregator = scoring.BootstrapAggregator()
    for prediction, reference in zip(PREDICTIONS, REFERENCES):
        aggregator.add_scores(scorer.score(reference, prediction))
    np.random.seed(7)
    expected = {key: value.mid.fmeasure for key, value in aggregator.aggregate().items()}
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    assert evaluation.rouge(PREDICTIONS, REFERENCES, bootstrap_seed=7) == expected
    assert (np.random.get_state()[1] == before).all()


def test_rouge_multi_reference_uses_the_best_reference():
    scorer = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
    references = [["completely unrelated", REFERENCES[0]], [REFERENCES[1]]]
    ours = evaluation.rouge(PREDICTIONS[:2], references, rouge_types=["rouge1"], use_aggregator=False)
    assert ours["rouge1"] == [scorer.score_multi(refs, pred)["rouge1"].fmeasure for refs, pred in zip(references, PREDICTIONS)]


def test_builtin_rouge_equals_an_evaluate_metric_loaded_from_a_local_script(tmp_path, monkeypatch):
    evaluate = pytest.importorskip("evaluate")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    script = tmp_path / "local_rouge" / "local_rouge.py"
    script.parent.mkdir()
    script.write_text(LOCAL_ROUGE_SCRIPT)
    # evaluate seeds numpy with the module's seed around compute(); our bootstrap_seed is that seed.
    metric = evaluate.load(str(script), seed=0)
    expected = metric.compute(predictions=PREDICTIONS, references=REFERENCES)
    assert evaluation.rouge(PREDICTIONS, REFERENCES, bootstrap_seed=0) == expected

    # The same metric object drives a summarization evaluation and agrees with the built-in one.
    tokenizer = word_tokenizer()
    model = TINY_ARCHS["bart"].build()
    data = datasets.Dataset.from_dict({"document": ["the cat sat on the mat", "w1 w2 w3 dog ran"], "summary": ["cat sat", "dog ran home"]})
    generation = {"max_new_tokens": 4, "do_sample": False}
    builtin = TaskEvaluator("summarization", data, tokenizer, generation_kwargs=generation, show_progress=False)
    with_metric = TaskEvaluator("summarization", data, tokenizer, metric=metric, metric_key="rougeLsum",
                                generation_kwargs=generation, show_progress=False)
    assert with_metric(model) == builtin(model)
    assert with_metric.metric_name == "rougeLsum" and with_metric.higher_is_better


def test_accuracy_and_f1_follow_their_definitions():
    predictions, references = [1, 0, 1, 1, 0, 2], [1, 0, 0, 1, 1, 2]
    assert evaluation.accuracy(predictions, references) == pytest.approx(4 / 6)
    # label 1: tp 2, predicted 3, actual 3 -> P = R = F1 = 2/3
    assert evaluation.f1(predictions, references) == pytest.approx(2 / 3)
    # macro over labels 0 (P 1/2, R 1/2), 1 (2/3), 2 (1)
    assert evaluation.f1(predictions, references, average="macro") == pytest.approx((0.5 + 2 / 3 + 1) / 3)
    with pytest.raises(ValueError, match="average"):
        evaluation.f1(predictions, references, average="micro")


def test_entity_chunks_follow_conlleval():
    assert evaluation.entities(["B-PER", "I-PER", "O", "B-LOC"]) == {("PER", 0, 1), ("LOC", 3, 3)}
    assert evaluation.entities(["I-PER", "I-PER", "I-LOC"]) == {("PER", 0, 1), ("LOC", 2, 2)}  # IOB1
    assert evaluation.entities(["B-PER", "B-PER"]) == {("PER", 0, 0), ("PER", 1, 1)}
    scores = evaluation.entity_scores([["B-PER", "I-PER", "O", "O"]], [["B-PER", "I-PER", "O", "B-LOC"]])
    assert scores["precision"] == 1.0 and scores["recall"] == 0.5 and scores["f1"] == pytest.approx(2 / 3)
    assert scores["accuracy"] == 0.75


def test_squad_scores_normalise_answers():
    assert evaluation.normalize_answer("The  Cat, sat!") == "cat sat"
    scores = evaluation.squad_scores(["the cat", "a big dog", "nothing"], [["Cat"], ["dog", "big red dog"], ["x"]])
    assert scores["exact_match"] == pytest.approx(100 / 3)
    # "big dog" vs "dog": P 1/2 R 1 F1 2/3; vs "big red dog": P 1 R 2/3 F1 0.8 -> max 0.8
    assert scores["f1"] == pytest.approx(100 * (1 + 0.8 + 0) / 3)


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv", ".tsv", ".parquet"])
def test_local_data_files_load_with_inferred_columns(tmp_path, suffix):
    rows = {"sentence": ["good cat", "bad dog"], "label": [1, 0]}
    path = tmp_path / f"data{suffix}"
    frame = datasets.Dataset.from_dict(rows).to_pandas()
    if suffix == ".json":
        path.write_text(json.dumps([dict(zip(rows, values)) for values in zip(*rows.values())]))
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    elif suffix in (".csv", ".tsv"):
        frame.to_csv(path, index=False, sep="\t" if suffix == ".tsv" else ",")
    else:
        frame.to_parquet(path)
    dataset = evaluation.load_eval_dataset(str(path))
    assert dataset.to_dict() == rows
    assert evaluation.resolve_columns(dataset, "text-classification") == {"text": "sentence", "label": "label"}


def test_column_and_file_errors_name_what_is_wrong(tmp_path):
    dataset = datasets.Dataset.from_dict({"body": ["x"], "target": [1]})
    with pytest.raises(KeyError, match=r"the evaluation dataset has no column for 'text'.*'body'"):
        evaluation.resolve_columns(dataset, "text-classification")
    assert evaluation.resolve_columns(dataset, "text-classification", {"text": "body", "label": "target"})["text"] == "body"
    with pytest.raises(KeyError, match=r"the evaluation dataset: columns\['text'\] = 'missing' is not one of its columns"):
        evaluation.resolve_columns(dataset, "text-classification", {"text": "missing"})
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        evaluation.load_eval_dataset(tmp_path / "nope.csv")
    (tmp_path / "data.xml").write_text("<x/>")
    with pytest.raises(ValueError, match="unsupported data file type '.xml'"):
        evaluation.load_eval_dataset(tmp_path / "data.xml")
    with pytest.raises(ValueError, match="no built-in evaluation"):
        TaskEvaluator("image-classification", dataset, word_tokenizer())


def test_text_classification_accuracy_matches_the_models_argmax():
    tokenizer, model = word_tokenizer(), TINY_ARCHS["bert"].build()
    texts = ["the cat sat", "a dog ran home", "good w1 w2", "bad w3", "w4 w5 w6 w7"]
    with torch.no_grad():
        predicted = [int(model(**tokenizer(text, return_tensors="pt")).logits.argmax()) for text in texts]
    labels = [predicted[0], predicted[1], (predicted[2] + 1) % 3, predicted[3], predicted[4]]
    data = datasets.Dataset.from_dict({"text": texts, "label": labels})
    evaluator = TaskEvaluator("text-classification", data, tokenizer, batch_size=2, show_progress=False)
    assert evaluator(model) == pytest.approx(4 / 5)
    assert evaluator.evaluate(model)["f1"] == pytest.approx(evaluation.f1(predicted, labels, average="macro"))


def test_token_classification_uses_the_first_subword_of_each_word():
    tokenizer, model = word_tokenizer(), TINY_ARCHS["bert_tokens"].build()
    model.config.id2label = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}
    words = [["the", "cat", "sat"], ["w1", "w2", "w3", "dog"]]
    with torch.no_grad():
        encoded = tokenizer(words, is_split_into_words=True, padding=True, return_tensors="pt")
        ids = model(**encoded).logits.argmax(-1)
    expected = [[model.config.id2label[int(ids[row][pos])] for pos, w in enumerate(encoded.word_ids(row)) if w is not None]
                for row in range(2)]
    features = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                                  "ner_tags": datasets.Sequence(datasets.ClassLabel(names=["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]))})
    label_ids = [[["O", "B-PER", "I-PER", "B-LOC", "I-LOC"].index(tag) for tag in tags] for tags in expected]
    data = datasets.Dataset.from_dict({"tokens": words, "ner_tags": label_ids}, features=features)
    scores = TaskEvaluator("token-classification", data, tokenizer, show_progress=False).evaluate(model)
    assert scores["accuracy"] == 1.0
    assert scores == evaluation.entity_scores(expected, expected)


def test_question_answering_extracts_the_best_context_span():
    tokenizer, model = word_tokenizer(), TINY_ARCHS["distilbert"].build()
    question, context = "w1 w2", "the cat sat on the mat"
    with torch.no_grad():
        encoded = tokenizer(question, context, return_tensors="pt", return_offsets_mapping=True)
        offsets = encoded.pop("offset_mapping")[0]
        output = model(**encoded)
    in_context = [i for i, sid in enumerate(encoded.sequence_ids(0)) if sid == 1]
    best = max(((s, e) for s in in_context for e in in_context if s <= e < s + 30),
               key=lambda span: float(output.start_logits[0, span[0]] + output.end_logits[0, span[1]]))
    answer = context[int(offsets[best[0]][0]) : int(offsets[best[1]][1])]
    data = datasets.Dataset.from_dict({"question": [question], "context": [context],
                                       "answers": [{"text": [answer], "answer_start": [context.index(answer)]}]})
    scores = TaskEvaluator("question-answering", data, tokenizer, show_progress=False).evaluate(model)
    assert scores == {"exact_match": 100.0, "f1": 100.0}


def test_perplexity_is_exp_of_the_models_own_mean_token_loss():
    tokenizer, model = word_tokenizer(), TINY_ARCHS["gpt2"].build()
    text = "the cat sat on the mat w1 w2 w3"
    with torch.no_grad():
        encoded = tokenizer(text, return_tensors="pt")
        expected = math.exp(float(model(**encoded, labels=encoded["input_ids"]).loss))
    data = datasets.Dataset.from_dict({"text": [text, text]})
    evaluator = TaskEvaluator("causal-lm", data, tokenizer, batch_size=2, show_progress=False)
    assert evaluator.metric_name == "perplexity" and not evaluator.higher_is_better
    assert evaluator(model) == pytest.approx(expected, rel=1e-5)
    # Padding is masked: a shorter second text must not change the first text's contribution.
    tokenizer.padding_side = "left"  # the evaluator pads on the right whatever the tokenizer says
    mixed = TaskEvaluator("causal-lm", datasets.Dataset.from_dict({"text": [text, "w1 w2"]}), tokenizer, batch_size=2,
                          show_progress=False)
    separate = [TaskEvaluator("causal-lm", datasets.Dataset.from_dict({"text": [t]}), tokenizer, show_progress=False)
                for t in (text, "w1 w2")]
    tokens = [len(tokenizer(t)["input_ids"]) - 1 for t in (text, "w1 w2")]
    expected_mixed = sum(math.log(e(model)) * n for e, n in zip(separate, tokens)) / sum(tokens)
    assert math.log(mixed(model)) == pytest.approx(expected_mixed, rel=1e-5)


def test_user_callable_metric_and_metric_key():
    tokenizer, model = word_tokenizer(), TINY_ARCHS["bert"].build()
    data = datasets.Dataset.from_dict({"text": ["the cat", "a dog"], "label": [0, 1]})

    def agreement(predictions, references):
        return {"agree": sum(p == r for p, r in zip(predictions, references)) / len(references), "count": len(references)}

    evaluator = TaskEvaluator("text-classification", data, tokenizer, metric=agreement, metric_key="agree", show_progress=False)
    assert evaluator(model) == TaskEvaluator("text-classification", data, tokenizer, show_progress=False)(model)
    ambiguous = TaskEvaluator("text-classification", data, tokenizer, metric=agreement, show_progress=False)
    with pytest.raises(ValueError, match="metric_key"):
        ambiguous(model)
    with pytest.raises(ValueError, match="not a built-in metric"):
        TaskEvaluator("text-classification", data, tokenizer, metric="rougeLsum")


# -- data that cannot be scored: every error names the file, and the row and column where there is one

GOOD_ROWS = {  # two rows each task scores, by the columns its evaluation infers
    "text-classification": {"text": ["the cat", "a dog"], "label": [0, 1]},
    "token-classification": {"tokens": [["the", "cat"], ["a", "dog", "ran"]], "ner_tags": [[0, 1], [0, 0, 2]]},
    "question-answering": {"question": ["w1", "w2"], "context": ["the cat sat", "a dog ran"], "answers": ["cat", "dog"]},
    "summarization": {"document": ["the cat sat on the mat", "a dog ran home"], "summary": ["cat sat", "dog ran"]},
    "text-generation": {"text": ["the cat sat on the mat", "a dog ran home"]},
}
GOOD_ROWS["text2text-generation"] = GOOD_ROWS["translation"] = GOOD_ROWS["summarization"]
MODELS = {"text-classification": "bert", "token-classification": "bert_tokens", "question-answering": "distilbert",
          "summarization": "bart", "text2text-generation": "bart", "translation": "bart", "text-generation": "gpt2"}


def _write_rows(path, columns: dict) -> str:
    path.write_text("".join(json.dumps(dict(zip(columns, values))) + "\n" for values in zip(*columns.values())))
    return str(path)


def _model_runs(model) -> list:
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls


def test_every_evaluated_task_has_rows_here():
    assert sorted(GOOD_ROWS) == sorted(EVALUATED_TASKS) == sorted(MODELS)


@pytest.mark.parametrize("task", sorted(EVALUATED_TASKS))
@pytest.mark.parametrize(("name", "content", "message"), [
    ("data.json", "", "is empty \\(0 bytes\\)"),
    ("data.csv", "text,label\n", "has no rows"),
    ("data.json", "[]", "has no rows"),
    ("data.json", "{not json", "is not a readable json file: JSON parse error"),
    ("data.jsonl", '{"text": "a"}\n{"text": ', "is not a readable jsonl file"),
], ids=["zero-byte", "header-only", "no-rows", "garbage-json", "truncated-jsonl"])
def test_unreadable_or_empty_files_are_named_for_every_task(task, name, content, message, tmp_path):
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=f"evaluation data file {tmp_path / name} {message}"):
        TaskEvaluator(task, str(tmp_path / name), word_tokenizer(), show_progress=False)


@pytest.mark.parametrize("task", sorted(EVALUATED_TASKS))
def test_a_missing_column_names_the_file_and_the_column_for_every_task(task, tmp_path):
    for dropped in GOOD_ROWS[task]:
        rows = {column: values for column, values in GOOD_ROWS[task].items() if column != dropped}
        role = next(role for role, names in EVALUATED_TASKS[task].evaluation.columns.items() if dropped in names)
        path = _write_rows(tmp_path / f"without-{dropped}.jsonl", rows or {"other": ["x", "y"]})
        with pytest.raises(KeyError, match=rf"evaluation data {path} has no column for '{role}'.* Pass columns="):
            TaskEvaluator(task, path, word_tokenizer(), show_progress=False)


@pytest.mark.parametrize("task", sorted(EVALUATED_TASKS))
def test_a_value_of_the_wrong_kind_names_file_row_and_column_for_every_task(task, tmp_path):
    """A csv's empty cell (None), a number where text belongs, text where a list of words belongs: refused
    before any batch runs, where the model would have read it as text or crashed deep in a tokenizer."""
    for column, values in GOOD_ROWS[task].items():
        for wrong in (None, 7.5) + (("the cat",) if isinstance(values[1], list) else ()):
            rows = {name: list(values) for name, values in GOOD_ROWS[task].items()}
            rows[column][1] = wrong
            path = _write_rows(tmp_path / "data.jsonl", rows)
            with pytest.raises(DataError, match=rf"evaluation data {path}, row 1: column '{column}' holds {wrong!r}, not "):
                TaskEvaluator(task, path, word_tokenizer(), show_progress=False)


@pytest.mark.parametrize(("label", "message"), [
    (3, "label 3 \\(column 'label'\\) is not one of the model's 3 labels 0..2"),
    (-1, "label -1 \\(column 'label'\\) is not one of the model's 3 labels 0..2"),
    ("positive", "label 'positive' \\(column 'label'\\) is not in the model's label2id"),
], ids=["too-large", "negative", "unknown-name"])
def test_a_label_outside_the_models_labels_is_named_before_the_model_runs(label, message, tmp_path):
    model = TINY_ARCHS["bert"].build()
    path = _write_rows(tmp_path / "reviews.jsonl", {"text": ["the cat", "a dog", "w1"], "label": [0, 1, label]})
    runs = _model_runs(model)
    evaluator = TaskEvaluator("text-classification", path, word_tokenizer(), batch_size=1, show_progress=False)
    with pytest.raises(DataError, match=f"evaluation data {path}, row 2: {message}"):
        evaluator(model)
    assert runs == []


@pytest.mark.parametrize(("tokens", "tags", "message"), [
    (["a", "dog"], [0, 5], "tag 5 \\(column 'ner_tags'\\) is not a tag id 0..4"),
    (["a", "dog"], [0, -1], "tag -1 \\(column 'ner_tags'\\) is not a tag id 0..4"),
    (["a", "dog"], ["O", "B-ORG"], r"tag 'B-ORG' \(column 'ner_tags'\) is not one of the model's labels \['B-LOC', "),
    (["a", "dog", "ran"], [0, 1], "column 'tokens' holds 3 words and column 'ner_tags' 2 tags"),
], ids=["id-too-large", "negative-id", "unknown-tag", "one-tag-short"])
def test_a_tag_outside_the_models_labels_is_named_before_the_model_runs(tokens, tags, message, tmp_path):
    model = TINY_ARCHS["bert_tokens"].build()
    model.config.id2label = dict(enumerate(["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]))
    path = _write_rows(tmp_path / "ner.jsonl", {"tokens": [["the", "cat"], tokens], "ner_tags": [[0, 1], tags]})
    runs = _model_runs(model)
    evaluator = TaskEvaluator("token-classification", path, word_tokenizer(), show_progress=False)
    with pytest.raises(DataError, match=f"evaluation data {path}, row 1: {message}"):
        evaluator(model)
    assert runs == []


def test_tag_names_the_model_does_not_have_are_refused_not_scored_as_zero():
    """A model with generic labels (LABEL_0 ...) scored on a dataset whose ClassLabel names are entity tags:
    every prediction would miss every reference, a silent F1 of 0."""
    model = TINY_ARCHS["bert_tokens"].build()
    features = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                                  "ner_tags": datasets.Sequence(datasets.ClassLabel(names=["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]))})
    data = datasets.Dataset.from_dict({"tokens": [["the", "cat"]], "ner_tags": [[0, 1]]}, features=features)
    with pytest.raises(DataError, match=r"the evaluation dataset, row 0: tag 'O' \(column 'ner_tags'\) is not one of "
                                        r"the model's labels \['LABEL_0', .*do not belong together"):
        TaskEvaluator("token-classification", data, word_tokenizer(), show_progress=False)(model)
    model.config.id2label = dict(enumerate(["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]))
    assert 0.0 <= TaskEvaluator("token-classification", data, word_tokenizer(), show_progress=False)(model) <= 1.0


@pytest.mark.parametrize("task", sorted(EVALUATED_TASKS))
def test_the_good_rows_of_every_task_evaluate(task, tmp_path):
    """The rows the error tests start from are themselves scored (so each error above is the edit's)."""
    path = _write_rows(tmp_path / "data.jsonl", GOOD_ROWS[task])
    model = TINY_ARCHS[MODELS[task]].build()
    model.config.id2label = {i: f"LABEL_{i}" for i in range(model.config.num_labels)}
    evaluator = TaskEvaluator(task, path, word_tokenizer(), show_progress=False, generation_kwargs={"max_new_tokens": 2})
    assert math.isfinite(evaluator(model))
