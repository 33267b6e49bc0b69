"""Text classification (and sentence pairs): accuracy and F1 of the argmax label."""

from .metrics import accuracy, f1
from .task_evaluation import DataError, TaskEvaluation, model_device


class TextClassification(TaskEvaluation):
    metrics = ("accuracy", "f1")
    columns = {
        "text": ("text", "sentence", "sentence1", "content", "review", "document"),
        "text_pair": ("text_pair", "sentence2"),
        "label": ("label", "labels", "sentiment"),
    }
    column_kinds = {"text": "text", "text_pair": "text", "label": "label"}
    optional_columns = frozenset({"text_pair"})

    def encode(self, evaluator, rows):
        texts = [evaluator.column(row, "text") for row in rows]
        pairs = [evaluator.column(row, "text_pair") for row in rows] if "text_pair" in evaluator.columns else None
        return evaluator.tokenizer(texts, pairs, padding=True, truncation=True, max_length=evaluator.max_length,
                                   return_tensors="pt")

    def predict(self, evaluator, model, rows):
        logits = model(**self.encode(evaluator, rows).to(model_device(model))).logits
        return logits.argmax(-1).tolist()

    def references(self, evaluator, model, rows):
        return [self._label_id(model, evaluator.column(row, "label"), evaluator.columns["label"]) for row in rows]

    @staticmethod
    def _label_id(model, label, column: str) -> int:
        if isinstance(label, str):
            label2id = getattr(model.config, "label2id", None) or {}
            if label not in label2id:
                raise DataError(f"label {label!r} (column {column!r}) is not in the model's label2id {label2id}.")
            return int(label2id[label])
        num_labels = model.config.num_labels
        if isinstance(label, float) and label.is_integer():
            label = int(label)
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < num_labels:
            raise DataError(f"label {label!r} (column {column!r}) is not one of the model's {num_labels} labels "
                             f"0..{num_labels - 1}; the dataset and the model do not belong together.")
        return label

    def reduce(self, evaluator, model, predictions, references):
        num_labels = max(model.config.num_labels, 2)
        return {
            "accuracy": accuracy(predictions, references),
            "f1": f1(predictions, references, average="binary" if num_labels == 2 else "macro"),
        }
