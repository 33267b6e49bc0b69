"""Pipelines for int8 models: ``pipeline()`` plus the tasks transformers 5 removed."""

from .factory import pipeline
from .question_answering import QuestionAnsweringInput, QuestionAnsweringPipeline
from .text2text import SummarizationPipeline, Text2TextGenerationPipeline, TranslationPipeline

__all__ = [
    "QuestionAnsweringInput",
    "QuestionAnsweringPipeline",
    "SummarizationPipeline",
    "Text2TextGenerationPipeline",
    "TranslationPipeline",
    "pipeline",
]
