"""Tuning and the CLI under torch.distributed: 2 ranks choose what one process chooses, and only rank 0 writes."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from transformers import AutoModelForSequenceClassification

import rank_group
from optimum_int8 import INCModelForSequenceClassification, cli
from optimum_int8.evaluation import TaskEvaluator, distributed
from optimum_int8.evaluation.text_classification import TextClassification
from optimum_int8.tuning import INCQuantizer, TuningConfig
from test_evaluation_distributed import sentences
from test_tuning_quantizer import SENSITIVE, Fidelity, calibration_inputs, sensitive_bert
from word_tokenizer import word_tokenizer

ROWS = 30
TORCHRUN_TIMEOUT_SECONDS = 240


def tuning_data(model) -> datasets.Dataset:
    """Rows labelled with the fp32 model's own predictions: fp32 accuracy 1, and the wrecked modules cost accuracy."""
    tokenizer, texts = word_tokenizer(), sentences(ROWS, length=8)
    with torch.no_grad():
        labels = [int(model(**tokenizer(text, return_tensors="pt")).logits.argmax()) for text in texts]
    return datasets.Dataset.from_dict({"text": texts, "label": labels})


def tune(save_directory=None):
    """Tune the sensitive BERT on accuracy (relative loss 0: each wrong row fails), as one process or on each rank."""
    model = sensitive_bert()
    quantizer = INCQuantizer(model, task="text-classification", tokenizer=word_tokenizer())
    return quantizer, quantizer.quantize(
        tuning=TuningConfig(metric="accuracy", tolerable_loss=0.0, calibration_samples=4), eval_dataset=tuning_data(model),
        batch_size=4, save_directory=save_directory, show_progress=False,
    )


def untimed(record) -> dict:
    """The tuning record without what depends on the clock."""
    record = dataclasses.asdict(record)
    record["trial_results"] = [{key: value for key, value in trial.items() if key != "seconds"} for trial in record["trial_results"]]
    return record


def tune_on_this_rank(save_directory: str):
    """Worker: count the rows this rank predicts and the saves it makes, then tune."""
    predicted, saves = [], []
    predict = TextClassification.predict

    def counting_predict(self, evaluator, model, rows):
        predicted.append(len(rows))
        return predict(self, evaluator, model, rows)

    TextClassification.predict = counting_predict
    save = INCQuantizer.save

    def recording_save(self, *args, **kwargs):
        saves.append(distributed.rank())
        return save(self, *args, **kwargs)

    INCQuantizer.save = recording_save
    quantizer, qmodel = tune(save_directory)
    manifest = qmodel.config.quantization_config.manifest
    return {"fallback_modules": manifest.fallback_modules, "record": untimed(manifest.tuning), "rows_predicted": sum(predicted),
            "saves": saves, "evaluations": quantizer.last_outcome.evaluations}


@pytest.fixture(scope="module")
def single_process():
    quantizer, qmodel = tune()
    return quantizer, qmodel.config.quantization_config.manifest


def test_tuning_on_two_ranks_chooses_what_one_process_chooses(tmp_path, single_process):
    _, manifest = single_process
    assert manifest.tuning.trials >= 3 and manifest.fallback_modules  # a real search, not one passing trial
    ranks = rank_group.results(rank_group.run_ranks(tune_on_this_rank, 2, str(tmp_path / "int8")))
    for rank in ranks:
        assert rank["fallback_modules"] == manifest.fallback_modules
        assert rank["record"] == untimed(manifest.tuning)
    # Each evaluation's rows were split between the ranks, once each; only rank 0 saved.
    assert sum(rank["rows_predicted"] for rank in ranks) == ROWS * ranks[0]["evaluations"]
    assert all(0 < rank["rows_predicted"] < ROWS * rank["evaluations"] for rank in ranks)
    assert [rank["saves"] for rank in ranks] == [[0], []]
    saved = INCModelForSequenceClassification.from_pretrained(tmp_path / "int8").config.quantization_config.manifest
    assert saved.fallback_modules == manifest.fallback_modules and untimed(saved.tuning) == untimed(manifest.tuning)


# ------------------------------------------------------------------------------------------ the CLI


@pytest.fixture
def model_and_csv(tmp_path):
    model_dir, model = tmp_path / "bert-fp32", sensitive_bert()
    model.save_pretrained(model_dir)
    word_tokenizer().save_pretrained(model_dir)
    data = tmp_path / "rows.csv"
    tuning_data(model).rename_columns({"text": "sentence", "label": "stars"}).to_csv(data)
    return model_dir, data


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", HF_HUB_OFFLINE="1",
               OPTIMUM_INT8_DIST_TIMEOUT="60", PYTHONPATH=os.pathsep.join(sys.path))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "optimum_int8.cli", *args]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=TORCHRUN_TIMEOUT_SECONDS)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def test_evaluate_json_is_the_same_from_torchrun_and_one_process(model_and_csv, tmp_path, capsys):
    model_dir, data = model_and_csv
    args = ["evaluate", str(model_dir), "--task", "text-classification", "--dataset", str(data), "--column", "label=stars",
            "--batch-size", "4"]
    assert cli.main([*args, "--json", str(tmp_path / "one.json")]) == 0
    table = capsys.readouterr().out
    one = json.loads((tmp_path / "one.json").read_text())
    evaluator = TaskEvaluator("text-classification", str(data), word_tokenizer(), columns={"label": "stars"}, batch_size=4,
                              show_progress=False)
    metrics = evaluator.evaluate(AutoModelForSequenceClassification.from_pretrained(model_dir))
    assert one == {"task": "text-classification", "metric": "accuracy", "value": metrics["accuracy"], "samples": ROWS,
                   "model": str(model_dir), "dataset": str(data), "metrics": metrics}
    assert json.loads(table) == metrics  # the human output is the metrics dict, as before

    done = torchrun(*args, "--json", str(tmp_path / "two.json"), cwd=tmp_path)
    assert json.loads((tmp_path / "two.json").read_text()) == one
    assert json.loads(done.stdout) == metrics  # printed once, by rank 0


def test_quantize_under_torchrun_saves_once_what_one_process_saves(model_and_csv, tmp_path):
    model_dir, data = model_and_csv
    args = ["quantize", str(model_dir), "--task", "text-classification", "--dataset", str(data), "--column", "label=stars",
            "--tolerable-loss", "0", "--fallback-dtype", "float32", "--batch-size", "4", "--calibration-samples", "4"]
    assert cli.main([*args, "-o", str(tmp_path / "one")]) == 0
    done = torchrun(*args, "-o", str(tmp_path / "two"), cwd=tmp_path)
    assert done.stdout.count("saved to") == 1  # rank 0 prints, and saves
    one, two = (INCModelForSequenceClassification.from_pretrained(tmp_path / name).config.quantization_config.manifest
                for name in ("one", "two"))
    assert one.tuning.trials >= 3 and one.fallback_modules
    assert two.fallback_modules == one.fallback_modules and untimed(two.tuning) == untimed(one.tuning)


def tune_with_a_rank_dependent_eval_fn():
    """Worker: rank 1's eval_fn says every model is perfect; rank 0's measures. Rank 0's values must decide."""
    model = sensitive_bert()
    fidelity = Fidelity(model, calibration_inputs())

    def flattering(model) -> float:
        return 1.0

    flattering.__name__ = fidelity.__name__
    eval_fn = fidelity if distributed.rank() == 0 else flattering
    qmodel = INCQuantizer(model).quantize(tuning=TuningConfig(tolerable_loss=0.01, fallback_dtype="float32"), eval_fn=eval_fn,
                                          calibration_dataset=[calibration_inputs()], show_progress=False)
    manifest = qmodel.config.quantization_config.manifest
    return {"fallback_modules": manifest.fallback_modules, "record": untimed(manifest.tuning)}


def test_a_user_eval_fn_is_decided_by_rank_0_on_every_rank():
    model = sensitive_bert()
    qmodel = INCQuantizer(model).quantize(tuning=TuningConfig(tolerable_loss=0.01, fallback_dtype="float32"),
                                          eval_fn=Fidelity(model, calibration_inputs()), calibration_dataset=[calibration_inputs()],
                                          show_progress=False)
    expected = qmodel.config.quantization_config.manifest
    assert expected.fallback_modules == dict.fromkeys(SENSITIVE, "float32")
    for rank in rank_group.results(rank_group.run_ranks(tune_with_a_rank_dependent_eval_fn, 2)):
        assert rank["fallback_modules"] == expected.fallback_modules
        assert rank["record"] == untimed(expected.tuning)
