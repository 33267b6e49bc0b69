"""Seq2seq generation (summarization, text2text, translation): ROUGE of the generated text against the target."""

from .metrics import rouge
from .task_evaluation import TaskEvaluation, model_device


class Seq2SeqGeneration(TaskEvaluation):
    metrics = ("rougeLsum", "rouge1", "rouge2", "rougeL")
    columns = {
        "source": ("document", "article", "text", "source", "input", "dialogue"),
        "target": ("summary", "highlights", "target", "abstract", "output"),
    }
    column_kinds = {"source": "text", "target": "text"}

    def encode(self, evaluator, rows):
        return evaluator.tokenizer([evaluator.column(row, "source") for row in rows], padding=True, truncation=True,
                                   max_length=evaluator.max_length, return_tensors="pt")

    def calibration_inputs(self, evaluator, rows):
        """Batches carry ``labels`` so that the decoder runs on the reference text."""
        inputs = evaluator.tokenizer([evaluator.column(row, "source") for row in rows],
                                     text_target=[evaluator.column(row, "target") for row in rows], padding=True,
                                     truncation=True, max_length=evaluator.max_length, return_tensors="pt")
        inputs["labels"] = inputs["labels"].masked_fill(inputs["labels"] == evaluator.tokenizer.pad_token_id, -100)
        return dict(inputs)

    def predict(self, evaluator, model, rows):
        generated = model.generate(**self.encode(evaluator, rows).to(model_device(model)), **evaluator.generation_kwargs)
        return [text.strip() for text in evaluator.tokenizer.batch_decode(generated, skip_special_tokens=True)]

    def references(self, evaluator, model, rows):
        return [evaluator.column(row, "target") for row in rows]

    def reduce(self, evaluator, model, predictions, references):
        return rouge(predictions, references)
