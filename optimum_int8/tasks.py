"""Pipeline task names, and the transformers Auto class that loads a model for each."""

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

TASK_AUTO_CLASSES = {
    "feature-extraction": AutoModel,
    "fill-mask": AutoModelForMaskedLM,
    "multiple-choice": AutoModelForMultipleChoice,
    "question-answering": AutoModelForQuestionAnswering,
    "summarization": AutoModelForSeq2SeqLM,
    "text-classification": AutoModelForSequenceClassification,
    "text-generation": AutoModelForCausalLM,
    "text2text-generation": AutoModelForSeq2SeqLM,
    "token-classification": AutoModelForTokenClassification,
    "translation": AutoModelForSeq2SeqLM,
    "zero-shot-classification": AutoModelForSequenceClassification,
}
