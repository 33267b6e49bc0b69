"""``optimum-int8 quantize`` and ``optimum-int8 evaluate`` on a tiny saved model and a local csv file."""

import json

import datasets
import pytest

from conftest import TINY_ARCHS
from optimum_int8 import INCModelForSequenceClassification, Int8DynamicLinear, cli
from optimum_int8.evaluation import TaskEvaluator
from word_tokenizer import word_tokenizer


@pytest.fixture
def model_and_data(tmp_path):
    model_dir = tmp_path / "bert-fp32"
    TINY_ARCHS["bert"].build().save_pretrained(model_dir)
    word_tokenizer().save_pretrained(model_dir)
    data = tmp_path / "reviews.csv"
    datasets.Dataset.from_dict({
        "review": ["good cat", "bad dog", "the cat sat on the mat", "a dog ran home", "w1 w2 good", "w3 bad w4"],
        "stars": [1, 0, 2, 1, 0, 2],
    }).to_csv(data)
    return model_dir, data


def test_quantize_tunes_from_the_shell_and_evaluate_reads_the_result(model_and_data, tmp_path, capsys):
    model_dir, data = model_and_data
    out = tmp_path / "bert-int8"
    code = cli.main([
        "quantize", str(model_dir), "--task", "text-classification", "--dataset", str(data), "--metric", "accuracy",
        "--column", "text=review", "--column", "label=stars", "--tolerable-loss", "1.0", "--fallback-dtype", "float32",
        "-o", str(out),
    ])
    assert code == 0
    assert "accuracy: fp32" in capsys.readouterr().out
    qmodel = INCModelForSequenceClassification.from_pretrained(out)
    record = qmodel.config.quantization_config.manifest.tuning
    assert record.metric == "accuracy" and record.tolerance == 1.0 and record.tolerance_met
    assert record.trials == 1 and record.trial_results[0]["fallbacks"] == 0  # all int8 passes a 100% tolerance
    assert (out / "tokenizer.json").is_file()

    assert cli.main(["evaluate", str(out), "--task", "text-classification", "--dataset", str(data),
                     "--column", "text=review", "--column", "label=stars"]) == 0
    printed = json.loads(capsys.readouterr().out)
    evaluator = TaskEvaluator("text-classification", str(data), word_tokenizer(), columns={"text": "review", "label": "stars"},
                              show_progress=False)
    assert printed == evaluator.evaluate(qmodel)
    assert printed["accuracy"] == record.int8_value


def test_quantize_without_dataset_is_untuned_and_a_missed_tolerance_exits_3(model_and_data, tmp_path, monkeypatch):
    model_dir, data = model_and_data
    assert cli.main(["quantize", str(model_dir), "--modules-in-fp32", "classifier", "-o", str(tmp_path / "plain")]) == 0
    manifest = INCModelForSequenceClassification.from_pretrained(tmp_path / "plain").config.quantization_config.manifest
    assert manifest.tuning is None and manifest.fallback_modules == {"classifier": "float32"}
    # A metric every int8 trial fails: the best model is still saved, and the exit code says it missed.
    monkeypatch.setattr(TaskEvaluator, "__call__", lambda self, model: 0.0 if is_int8(model) else 1.0)
    with pytest.warns(UserWarning, match="did not meet the tolerance"):
        code = cli.main(["quantize", str(model_dir), "--task", "text-classification", "--dataset", str(data),
                         "--column", "text=review", "--column", "label=stars", "--max-trials", "1",
                         "-o", str(tmp_path / "missed")])
    assert code == 3
    record = INCModelForSequenceClassification.from_pretrained(tmp_path / "missed").config.quantization_config.manifest.tuning
    assert record.tolerance_met is False and record.stop_reason == "max_trials"


def is_int8(model) -> bool:
    return any(isinstance(module, Int8DynamicLinear) for module in model.modules())


def test_commands_are_registered_under_optimum_cli():
    from optimum.commands.optimum_cli import load_optimum_namespace_cli_commands

    registered = {command.COMMAND.name: command for command, _ in load_optimum_namespace_cli_commands()}
    assert {info.name for info in registered["int8"].SUBCOMMANDS} == {"quantize", "evaluate"}
