"""The task registry: every task table (loaders, pipelines, metrics, CLI choices) derives from tasks.TASKS."""

import pytest

from optimum_int8 import tasks
from optimum_int8.evaluation import TASK_ALIASES, TASK_METRICS, TaskEvaluator
from optimum_int8.modeling import TASK_LOADERS
from optimum_int8.pipelines import factory
from optimum_int8.tuning import commands


def test_loaders_pipelines_and_metrics_derive_from_the_registry():
    assert set(TASK_LOADERS) == set(tasks.TASKS)
    for name, spec in tasks.TASKS.items():
        assert issubclass(TASK_LOADERS[name], spec.auto_class)
        assert (name in factory.PIPELINE_CLASSES) == (spec.pipeline is not None)
        if spec.pipeline is not None:
            assert factory.PIPELINE_CLASSES[name].__name__ == spec.pipeline
    assert set(factory.PIPELINE_CLASSES) == {"summarization", "text2text-generation", "translation", "question-answering"}
    assert TASK_METRICS == {name: spec.evaluation.metrics for name, spec in tasks.TASKS.items() if spec.evaluation is not None}
    assert TASK_ALIASES is tasks.TASK_ALIASES


def test_aliases_and_translation_pairs_resolve_to_one_spec():
    assert tasks.task_spec("sentiment-analysis") is tasks.TASKS["text-classification"]
    assert tasks.task_spec("ner") is tasks.TASKS["token-classification"]
    assert tasks.task_spec("causal-lm").default_metric == "perplexity" and not tasks.task_spec("causal-lm").higher_is_better()
    assert tasks.canonical_task("translation_en_to_de") == "translation"
    assert tasks.task_spec("translation").evaluation is tasks.task_spec("summarization").evaluation
    with pytest.raises(ValueError, match="unknown task 'image-segmentation'"):
        tasks.task_spec("image-segmentation")
    with pytest.raises(ValueError, match="'fill-mask' has no built-in evaluation"):
        tasks.evaluation_for("fill-mask")


def test_the_cli_offers_the_evaluated_tasks_and_their_aliases():
    parser = commands.argparse.ArgumentParser()
    commands.add_evaluate_arguments(parser)
    choices = next(action.choices for action in parser._actions if action.dest == "task")
    assert set(choices) == set(TASK_METRICS) | {"sentiment-analysis", "sequence-classification", "ner", "seq2seq-lm",
                                                 "causal-lm", "perplexity"}
    assert "fill-mask" not in choices
    assert TaskEvaluator.__module__ == "optimum_int8.evaluation.evaluator"
