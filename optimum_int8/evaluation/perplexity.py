"""Causal LM perplexity: ``exp(total token NLL / predicted tokens)`` over the corpus, padding masked."""

import copy
import math

import torch

from .task_evaluation import TaskEvaluation, model_device


class Perplexity(TaskEvaluation):
    metrics = ("perplexity", "loss")
    columns = {"text": ("text", "content", "document", "sentence")}
    column_kinds = {"text": "text"}
    accepts_user_metric = False  # computed from the model's logits, not from predictions

    def prepare_tokenizer(self, tokenizer):
        # Batches need a pad token, and right padding keeps each text at the positions it has when run
        # alone (decoder-only models number positions from the first token); padding is masked out.
        if tokenizer.pad_token is not None and tokenizer.padding_side == "right":
            return tokenizer
        tokenizer = copy.deepcopy(tokenizer)
        tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
        tokenizer.padding_side = "right"
        return tokenizer

    def encode(self, evaluator, rows):
        return evaluator.tokenizer([evaluator.column(row, "text") for row in rows], padding=True, truncation=True,
                                   max_length=evaluator.max_length, return_tensors="pt")

    def predict(self, evaluator, model, rows):
        """One ``(summed NLL, predicted tokens)`` pair for the whole batch."""
        inputs = self.encode(evaluator, rows).to(model_device(model))
        logits = model(**inputs).logits[:, :-1].float()
        targets = inputs["input_ids"][:, 1:]
        mask = inputs["attention_mask"][:, 1:].bool() & inputs["attention_mask"][:, :-1].bool()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        return [(float(nll[mask].sum()), int(mask.sum()))]

    def reduce(self, evaluator, model, predictions, references):
        total_nll, total_tokens = 0.0, 0
        for batch_nll, batch_tokens in predictions:  # in batch order, as one process sums them
            total_nll += batch_nll
            total_tokens += batch_tokens
        if total_tokens == 0:
            raise ValueError("perplexity: the texts produced no token to predict (each needs at least two tokens).")
        loss = total_nll / total_tokens
        return {"perplexity": math.exp(loss), "loss": loss}
