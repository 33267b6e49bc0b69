"""``optimum_int8.pipeline``: transformers' ``pipeline()`` for int8 models, including the tasks transformers 5 removed."""

import os
import warnings

import transformers
from transformers import AutoTokenizer, PreTrainedModel

from ..configuration import QUANT_METHOD
from ..modeling import TASK_LOADERS
from ..tasks import TASKS, canonical_task
from . import question_answering, text2text

# The tasks transformers 5 removed; optimum-int8 provides them (the registry names each one's class).
_PIPELINE_MODULES = (question_answering, text2text)
PIPELINE_CLASSES = {
    name: next(getattr(module, spec.pipeline) for module in _PIPELINE_MODULES if hasattr(module, spec.pipeline))
    for name, spec in TASKS.items()
    if spec.pipeline is not None
}

# Passed to both the model's and the tokenizer's from_pretrained.
HUB_KWARGS = ("revision", "token", "trust_remote_code", "local_files_only", "cache_dir")


def _is_int8(model) -> bool:
    return getattr(model, "quantization_method", None) == QUANT_METHOD


def _translation_task(model) -> str:
    """transformers 4's choice for a bare "translation": the first translation_xx_to_yy the model's config names."""
    for key in getattr(model.config, "task_specific_params", None) or {}:
        if key.startswith("translation"):
            warnings.warn(f'"translation" task was used, instead of "translation_XX_to_YY", defaulting to "{key}"', UserWarning)
            return key
    return "translation"


def _check_device(model, device):
    """int8 layers run on CPU kernels only: default to CPU and refuse other devices early."""
    if not _is_int8(model):
        return device
    if device is None:
        return "cpu"
    if str(device) not in ("cpu", "-1"):
        raise ValueError(
            f"optimum-int8 int8 layers run on CPU kernels only, but device={device!r} was passed. "
            "Leave device unset (or pass device='cpu')."
        )
    return device


def pipeline(task: str, model=None, tokenizer=None, model_kwargs: dict | None = None, device=None, **kwargs):
    """A transformers pipeline running an int8 model.

    ``model`` is a loaded model, a local directory or a Hub repo id (optimum-int8, legacy INC or fp32
    checkpoint): a path or id is loaded with the task's ``INCModelFor<Task>`` loader (``model_kwargs``
    go to its ``from_pretrained``; ``revision``, ``token``, ``trust_remote_code``, ``local_files_only``
    and ``cache_dir`` to both the model's and the tokenizer's), and the tokenizer from the same place
    unless ``tokenizer`` is given. summarization, text2text-generation, translation (and
    translation_xx_to_yy) and question-answering use optimum-int8's pipelines; every other task is
    ``transformers.pipeline`` with the loaded model (a path or id for a task without a loader goes to it
    as is). The remaining keyword arguments go to the pipeline (``batch_size``, generation parameters,
    ``top_k``, ...). int8 models run on CPU.
    """
    if model is None:
        raise ValueError(f"optimum_int8.pipeline({task!r}) needs model=: a loaded model, a local directory or a Hub repo id.")
    base_task = canonical_task(task)
    loader = TASK_LOADERS.get(base_task)
    if isinstance(model, (str, os.PathLike)) and loader is None:
        # No INCModelFor<Task> loader (vision, audio, ...): transformers' own loaders restore int8 checkpoints too.
        return transformers.pipeline(task, model=os.fspath(model), tokenizer=tokenizer, model_kwargs=model_kwargs, device=device, **kwargs)
    hub_kwargs = {key: kwargs.pop(key) for key in HUB_KWARGS if key in kwargs}
    if isinstance(model, (str, os.PathLike)):
        name_or_path = os.fspath(model)
        model = loader.from_pretrained(name_or_path, **hub_kwargs, **(model_kwargs or {}))
        if tokenizer is None:
            tokenizer = name_or_path
    elif not isinstance(model, PreTrainedModel):
        raise TypeError(f"model must be a transformers PreTrainedModel, a local directory or a Hub repo id, got {type(model).__name__}")
    elif model_kwargs:
        raise ValueError("model_kwargs are from_pretrained arguments: they apply only when model is a path or a repo id.")
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = AutoTokenizer.from_pretrained(os.fspath(tokenizer), **hub_kwargs)

    device = _check_device(model, device)
    pipeline_class = PIPELINE_CLASSES.get(base_task)
    if pipeline_class is None:
        return transformers.pipeline(task, model=model, tokenizer=tokenizer, device=device, **kwargs)
    if tokenizer is None:
        raise ValueError(f"optimum_int8.pipeline({task!r}) needs tokenizer= when model is a loaded model.")
    if task == "translation":
        task = _translation_task(model)
    return pipeline_class(model=model, tokenizer=tokenizer, task=task, device=device, **kwargs)
