"""``optimum-int8 quantize`` and ``optimum-int8 evaluate`` on a tiny saved model and a local csv file."""

import json

import datasets
import pytest
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

from conftest import LEGACY_FIXTURES, TINY_ARCHS
from optimum_int8 import INCModelForSequenceClassification, Int8DynamicLinear, cli
from optimum_int8.modeling import TASK_LOADERS
from optimum_int8.tasks import TASKS
from optimum_int8.tuning import INCQuantizer
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


# -- user errors: one line on stderr, exit code 2, a traceback only with --debug


def _one_line_error(capsys, *expected: str) -> str:
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert "Traceback" not in err and len(errors) == 1 and errors[0].startswith("optimum-int8 "), err
    for text in expected:
        assert text in errors[0], err
    return errors[0]


def test_a_missing_model_directory_or_dataset_is_one_line_with_exit_code_2(model_and_data, tmp_path, capsys):
    model_dir, data = model_and_data
    assert cli.main(["quantize", str(tmp_path / "no-such-model"), "-o", str(tmp_path / "out")]) == 2
    _one_line_error(capsys, "optimum-int8 quantize: error: model directory", "no-such-model does not exist")
    assert cli.main(["evaluate", str(tmp_path / "no-such-model"), "--task", "text-classification", "--dataset", str(data)]) == 2
    _one_line_error(capsys, "optimum-int8 evaluate: error:", "does not exist")
    assert cli.main(["quantize", str(model_dir), "--task", "text-classification", "--dataset", str(tmp_path / "missing.csv"),
                     "-o", str(tmp_path / "out")]) == 2
    _one_line_error(capsys, "dataset file", "missing.csv does not exist")
    assert not (tmp_path / "out").exists()
    with pytest.raises(FileNotFoundError, match="no-such-model does not exist"):
        cli.main(["--debug", "quantize", str(tmp_path / "no-such-model"), "-o", str(tmp_path / "out")])
    with pytest.raises(FileNotFoundError, match="no-such-model does not exist"):
        cli.main(["quantize", str(tmp_path / "no-such-model"), "-o", str(tmp_path / "out"), "--debug"])


def test_quantize_never_writes_over_its_source_or_another_model_unless_asked(model_and_data, tmp_path, capsys):
    model_dir, _ = model_and_data
    before = {p.name: p.read_bytes() for p in model_dir.iterdir()}
    assert cli.main(["quantize", str(model_dir), "-o", str(model_dir)]) == 2
    _one_line_error(capsys, "is the model being quantized", "--overwrite")
    other = tmp_path / "other-fp32"
    TINY_ARCHS["bert"].build(seed=5).save_pretrained(other)
    assert cli.main(["quantize", str(model_dir), "-o", str(other)]) == 2
    _one_line_error(capsys, "holds a float model")
    (tmp_path / "a-file").write_text("x")
    assert cli.main(["quantize", str(model_dir), "-o", str(tmp_path / "a-file")]) == 2
    _one_line_error(capsys, "exists and is a file")
    assert {p.name: p.read_bytes() for p in model_dir.iterdir()} == before
    assert cli.main(["quantize", str(model_dir), "-o", str(model_dir), "--overwrite"]) == 0
    assert INCModelForSequenceClassification.from_pretrained(model_dir).config.quantization_config.manifest is not None
    assert (model_dir / "tokenizer.json").is_file()


def test_a_read_only_output_is_one_line(model_and_data, mounted_tmpfs, capsys):
    model_dir, _ = model_and_data
    read_only = mounted_tmpfs("ro,size=1m")
    assert cli.main(["quantize", str(model_dir), "-o", str(read_only / "int8")]) == 2
    _one_line_error(capsys, "Read-only file system")


def test_a_full_disk_is_one_line_and_leaves_nothing_behind(model_and_data, mounted_tmpfs, capsys):
    model_dir, _ = model_and_data
    full = mounted_tmpfs("size=8k")
    assert cli.main(["quantize", str(model_dir), "-o", str(full / "int8")]) == 2
    _one_line_error(capsys, "No space left on device")
    assert list(full.iterdir()) == []


def test_evaluate_reads_a_legacy_inc_checkpoint(tmp_path, capsys):
    data = tmp_path / "pairs.csv"
    datasets.Dataset.from_dict({"sentence": ["a good movie", "a bad movie", "the cat sat", "it rained"],
                                "label": [1, 0, 1, 0]}).to_csv(data)
    assert cli.main(["evaluate", str(LEGACY_FIXTURES / "bert_seqcls_dynamic"), "--task", "text-classification",
                     "--dataset", str(data), "--column", "text=sentence"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert 0.0 <= printed["accuracy"] <= 1.0


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_loader_task_quantizes_without_tuning(tmp_path, task):
    auto_class = TASKS[task].auto_class
    arch = {AutoModelForSeq2SeqLM: "bart", AutoModelForCausalLM: "gpt2"}.get(auto_class, "roberta")
    model_dir = tmp_path / f"{arch}-fp32"
    TINY_ARCHS[arch].build().save_pretrained(model_dir)
    assert cli.main(["quantize", str(model_dir), "--task", task, "-o", str(tmp_path / "int8")]) == 0
    model = TASK_LOADERS[task].from_pretrained(tmp_path / "int8")
    assert type(model) is type(auto_class.from_pretrained(model_dir))
    assert any(isinstance(module, Int8DynamicLinear) for module in model.modules())
    assert type(INCQuantizer.from_pretrained(model_dir, task=task).quantize()) is type(model)


@pytest.mark.parametrize("task", ["fill-mask", "feature-extraction"])
def test_tuning_a_task_without_a_built_in_evaluation_is_one_line(tmp_path, task, capsys):
    model_dir = tmp_path / "roberta-fp32"
    TINY_ARCHS["roberta"].build().save_pretrained(model_dir)
    (tmp_path / "rows.csv").write_text("text\nw1 w2\n")
    assert cli.main(["quantize", str(model_dir), "--task", task, "--dataset", str(tmp_path / "rows.csv"),
                     "-o", str(tmp_path / "tuned")]) == 2
    _one_line_error(capsys, f"--task {task} has no built-in evaluation")


def test_an_already_quantized_or_legacy_checkpoint_is_not_quantized_again(model_and_data, tmp_path, capsys):
    model_dir, _ = model_and_data
    assert cli.main(["quantize", str(model_dir), "-o", str(tmp_path / "int8")]) == 0
    assert cli.main(["quantize", str(tmp_path / "int8"), "-o", str(tmp_path / "again")]) == 2
    _one_line_error(capsys, "is already quantized (quant_method 'optimum_int8')")
    assert cli.main(["quantize", str(LEGACY_FIXTURES / "bert_seqcls_dynamic"), "-o", str(tmp_path / "again")]) == 2
    _one_line_error(capsys, "is a legacy INC int8 checkpoint, already quantized")
    assert not (tmp_path / "again").exists()


def test_an_unknown_architecture_without_a_task_is_refused_instead_of_losing_its_head(model_and_data, tmp_path, capsys):
    model_dir, _ = model_and_data
    config = json.loads((model_dir / "config.json").read_text())
    config["architectures"] = ["BertForSomethingNew"]
    (model_dir / "config.json").write_text(json.dumps(config))
    assert cli.main(["quantize", str(model_dir), "-o", str(tmp_path / "int8")]) == 2
    _one_line_error(capsys, "names architecture 'BertForSomethingNew'", "pass its task")
    assert cli.main(["quantize", str(model_dir), "--task", "text-classification", "-o", str(tmp_path / "int8")]) == 0
    assert INCModelForSequenceClassification.from_pretrained(tmp_path / "int8").classifier is not None


def test_a_model_directory_without_a_tokenizer_is_named_not_evaluated_on_unk(model_and_data, tmp_path, capsys):
    model_dir, data = model_and_data
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (model_dir / name).unlink(missing_ok=True)
    assert cli.main(["evaluate", str(model_dir), "--task", "text-classification", "--dataset", str(data),
                     "--column", "text=review", "--column", "label=stars"]) == 2
    _one_line_error(capsys, "has no tokenizer", "[UNK]")
    assert cli.main(["quantize", str(model_dir), "--task", "text-classification", "--dataset", str(data),
                     "--column", "text=review", "--column", "label=stars", "-o", str(tmp_path / "int8")]) == 2
    _one_line_error(capsys, "tokenizer")


@pytest.mark.parametrize(("content", "message"), [
    ("", "is empty (0 bytes)"),
    ("review,stars\n", "has no rows"),
    ("review,stars\ngood cat,7\n", "row 0: label 7 (column 'stars') is not one of the model's 3 labels 0..2"),
    ("review,stars\ngood cat,\n", "row 0: column 'stars' holds None, not a label"),
    ("words,stars\ngood cat,1\n", "has no column for 'text'"),
], ids=["zero-byte", "header-only", "label-outside", "label-missing", "missing-column"])
def test_bad_evaluation_data_is_one_line_naming_the_file(model_and_data, tmp_path, capsys, content, message):
    model_dir, _ = model_and_data
    data = tmp_path / "bad.csv"
    data.write_text(content)
    assert cli.main(["evaluate", str(model_dir), "--task", "text-classification", "--dataset", str(data),
                     "--column", "label=stars"] + (["--column", "text=review"] if "review" in content else [])) == 2
    _one_line_error(capsys, str(data), message)


def test_garbage_json_evaluation_data_is_named(model_and_data, tmp_path, capsys):
    model_dir, _ = model_and_data
    data = tmp_path / "bad.json"
    data.write_text("{not json")
    assert cli.main(["evaluate", str(model_dir), "--task", "text-classification", "--dataset", str(data)]) == 2
    _one_line_error(capsys, "bad.json is not a readable json file")


def test_quantize_with_a_calibrated_scheme_from_the_shell(model_and_data, tmp_path, capsys):
    from optimum_int8.nn import Int8StaticActivationLinear

    model_dir, data = model_and_data
    out = tmp_path / "static"
    assert cli.main(["quantize", str(model_dir), "--scheme", "int8_static", "--smoothquant-alpha", "auto",
                     "--observer", "histogram", "--task", "text-classification", "--calibration-dataset", str(data),
                     "--column", "text=review", "--column", "label=stars", "--calibration-samples", "4",
                     "-o", str(out)]) == 0
    qmodel = INCModelForSequenceClassification.from_pretrained(out)
    assert isinstance(qmodel.bert.encoder.layer[0].output.dense, Int8StaticActivationLinear)
    calibration = qmodel.config.quantization_config.manifest.calibration
    assert calibration.observer == "histogram" and calibration.smoothquant_alpha == "auto" and calibration.module_alphas

    assert cli.main(["quantize", str(model_dir), "--scheme", "int8_static", "-o", str(tmp_path / "x")]) == 2
    assert "calibrates activations: give --calibration-dataset" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        cli.main(["quantize", str(model_dir), "--smoothquant-alpha", "high", "-o", str(tmp_path / "y")])
    assert exited.value.code == 2 and "must be a number in [0, 1] or 'auto', got 'high'" in capsys.readouterr().err
