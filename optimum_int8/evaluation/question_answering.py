"""Extractive question answering: the best context span, scored with SQuAD's exact match and F1."""

import torch

from .metrics import squad_scores
from .task_evaluation import TaskEvaluation, model_device

MAX_ANSWER_TOKENS = 30


class QuestionAnswering(TaskEvaluation):
    metrics = ("f1", "exact_match")
    columns = {"question": ("question",), "context": ("context",), "answers": ("answers", "answer")}
    column_kinds = {"question": "text", "context": "text", "answers": "answers"}
    needs_fast_tokenizer = True

    def encode(self, evaluator, rows, offsets: bool = False):
        return evaluator.tokenizer(
            [evaluator.column(row, "question") for row in rows], [evaluator.column(row, "context") for row in rows],
            padding=True, truncation="only_second", max_length=evaluator.max_length, return_offsets_mapping=offsets,
            return_tensors="pt",
        )

    def predict(self, evaluator, model, rows):
        inputs = self.encode(evaluator, rows, offsets=True)
        offsets = inputs.pop("offset_mapping")
        outputs = model(**inputs.to(model_device(model)))
        predictions = []
        for index, row in enumerate(rows):
            context_mask = torch.tensor([sid == 1 for sid in inputs.sequence_ids(index)])
            start, end = best_span(outputs.start_logits[index].float().cpu(), outputs.end_logits[index].float().cpu(), context_mask)
            context = evaluator.column(row, "context")
            predictions.append(context[int(offsets[index][start][0]) : int(offsets[index][end][1])])
        return predictions

    def references(self, evaluator, model, rows):
        return [answer_texts(evaluator.column(row, "answers")) for row in rows]

    def reduce(self, evaluator, model, predictions, references):
        return squad_scores(predictions, references)

    def evaluate_format(self, predictions, references):
        """evaluate's squad metric takes dicts with ids."""
        ids = [str(i) for i in range(len(predictions))]
        return (
            [{"id": i, "prediction_text": p} for i, p in zip(ids, predictions)],
            [{"id": i, "answers": {"text": a, "answer_start": [0] * len(a)}} for i, a in zip(ids, references)],
        )


def answer_texts(answers) -> list[str]:
    if isinstance(answers, str):
        return [answers]
    if isinstance(answers, dict):
        return list(answers["text"]) or [""]
    return list(answers)


def best_span(start_logits, end_logits, context_mask, max_answer_tokens: int = MAX_ANSWER_TOKENS) -> tuple[int, int]:
    """(start, end) token positions inside the context with the highest start + end logit, at most ``max_answer_tokens`` long."""
    scores = start_logits[:, None] + end_logits[None, :]
    length = torch.arange(len(start_logits))
    allowed = (length[None, :] >= length[:, None]) & (length[None, :] - length[:, None] < max_answer_tokens)
    allowed &= context_mask[:, None] & context_mask[None, :]
    scores = scores.masked_fill(~allowed, float("-inf"))
    flat = int(scores.argmax())
    return divmod(flat, scores.shape[1])
