"""One task registry: a ``TaskSpec`` per pipeline task, and every task table derives from it.

A spec names the transformers Auto class that loads the task's model (``modeling.TASK_LOADERS`` picks
the ``INCModelFor<Task>`` loader subclassing it), the optimum-int8 pipeline class where transformers 5
dropped the task (``pipelines.PIPELINE_CLASSES``), the aliases accepted for the name, and the task's
evaluation (``TaskEvaluation``: encode a batch, predict, reduce to the metrics, the default metric
first, the columns read), used by ``TaskEvaluator``, the tuner and the ``quantize`` / ``evaluate``
commands.
"""

import dataclasses

from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForMultipleChoice,
    AutoModelForQuestionAnswering,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from .evaluation.generation import Seq2SeqGeneration
from .evaluation.metrics import higher_is_better
from .evaluation.perplexity import Perplexity
from .evaluation.question_answering import QuestionAnswering
from .evaluation.task_evaluation import TaskEvaluation
from .evaluation.text_classification import TextClassification
from .evaluation.token_classification import TokenClassification


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """What optimum-int8 knows about one task.

    Args:
        name: the pipeline task name.
        auto_class: the transformers Auto class that loads its model.
        pipeline: the name of the ``optimum_int8.pipelines`` class that runs it (the tasks transformers 5
            removed); ``None``: ``transformers.pipeline`` runs it.
        aliases: other names accepted for the task.
        evaluation: its built-in evaluation, or ``None`` when it has none.
    """

    name: str
    auto_class: type
    pipeline: str | None = None
    aliases: tuple[str, ...] = ()
    evaluation: TaskEvaluation | None = None

    @property
    def metrics(self) -> tuple[str, ...]:
        return self.evaluation.metrics if self.evaluation is not None else ()

    @property
    def default_metric(self) -> str | None:
        return self.metrics[0] if self.metrics else None

    def higher_is_better(self, metric: str | None = None) -> bool:
        return higher_is_better(metric or self.default_metric)


_GENERATION = Seq2SeqGeneration()
TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("feature-extraction", AutoModel),
        TaskSpec("fill-mask", AutoModelForMaskedLM),
        TaskSpec("multiple-choice", AutoModelForMultipleChoice),
        TaskSpec("question-answering", AutoModelForQuestionAnswering, pipeline="QuestionAnsweringPipeline",
                 evaluation=QuestionAnswering()),
        TaskSpec("summarization", AutoModelForSeq2SeqLM, pipeline="SummarizationPipeline", evaluation=_GENERATION),
        TaskSpec("text-classification", AutoModelForSequenceClassification,
                 aliases=("sentiment-analysis", "sequence-classification"), evaluation=TextClassification()),
        TaskSpec("text-generation", AutoModelForCausalLM, aliases=("causal-lm", "perplexity"), evaluation=Perplexity()),
        TaskSpec("text2text-generation", AutoModelForSeq2SeqLM, pipeline="Text2TextGenerationPipeline",
                 aliases=("seq2seq-lm",), evaluation=_GENERATION),
        TaskSpec("token-classification", AutoModelForTokenClassification, aliases=("ner",),
                 evaluation=TokenClassification()),
        TaskSpec("translation", AutoModelForSeq2SeqLM, pipeline="TranslationPipeline", evaluation=_GENERATION),
        TaskSpec("zero-shot-classification", AutoModelForSequenceClassification),
    )
}
TASK_ALIASES = {alias: spec.name for spec in TASKS.values() for alias in spec.aliases}


def canonical_task(task: str) -> str:
    """The registry name of ``task`` (aliases resolved; ``translation_xx_to_yy`` is ``translation``)."""
    task = TASK_ALIASES.get(task, task)
    return "translation" if task.startswith("translation_") else task


def task_spec(task: str) -> TaskSpec:
    name = canonical_task(task)
    if name not in TASKS:
        raise ValueError(f"unknown task {task!r}; tasks are {sorted(TASKS)} (aliases {sorted(TASK_ALIASES)}).")
    return TASKS[name]


def evaluation_for(task: str) -> TaskEvaluation:
    """The built-in evaluation of ``task``, or a ValueError naming the tasks that have one."""
    spec = TASKS.get(canonical_task(task))
    if spec is None or spec.evaluation is None:
        raise ValueError(f"task {task!r} has no built-in evaluation; supported tasks are {sorted(EVALUATED_TASKS)}.")
    return spec.evaluation


# Derived tables.
TASK_AUTO_CLASSES = {name: spec.auto_class for name, spec in TASKS.items()}
EVALUATED_TASKS = {name: spec for name, spec in TASKS.items() if spec.evaluation is not None}
TASK_METRICS = {name: spec.metrics for name, spec in EVALUATED_TASKS.items()}
