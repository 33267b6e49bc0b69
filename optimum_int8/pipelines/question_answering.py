"""Extractive question answering (task ``"question-answering"``), which transformers 5 removed.

Behaves like the transformers 4 pipeline: answers ``{"score", "start", "end", "answer"}`` with
character offsets into the context; long contexts are split into overlapping windows
(``max_seq_len``, ``doc_stride``) whose candidates compete on one scale; ``top_k``,
``max_answer_len``, ``handle_impossible_answer`` and ``align_to_words`` as before.
"""

import dataclasses
from collections.abc import Iterator

import torch
from torch.utils.data import Dataset
from transformers.models.auto.modeling_auto import MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES
from transformers.pipelines.base import ChunkPipeline

QA_INPUT_KEYWORDS = ("question", "context", "X", "data")


@dataclasses.dataclass(frozen=True)
class QuestionAnsweringInput:
    """One question about one context."""

    question: str
    context: str

    def __post_init__(self):
        for name in ("question", "context"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise ValueError(f"`{name}` must be a non-empty string, got {type(value).__name__}: {value!r}")
            if not value:
                raise ValueError(f"`{name}` cannot be empty")


def to_qa_input(item) -> QuestionAnsweringInput:
    if isinstance(item, QuestionAnsweringInput):
        return item
    if isinstance(item, dict):
        missing = [key for key in ("question", "context") if key not in item]
        if missing:
            raise KeyError(f"a question-answering input is a dict with keys 'question' and 'context'; {missing} missing")
        return QuestionAnsweringInput(item["question"], item["context"])
    raise ValueError(
        f"a question-answering input is a dict with 'question' and 'context' (or a QuestionAnsweringInput), "
        f"got {type(item).__name__}: {item!r}"
    )


def parse_qa_inputs(args: tuple, keywords: dict):
    """Turn the call forms transformers 4 accepted into one input, a list, or a lazy stream of inputs.

    Forms: ``(question, context)``; ``question=..., context=...`` (strings, or lists paired up, or a list
    of questions about one context); a dict, a list of dicts, a generator or a ``Dataset`` of dicts,
    positionally or as ``X=`` / ``data=``.
    """
    if len(args) == 2 and all(arg is None or isinstance(arg, str) for arg in args):
        return QuestionAnsweringInput(*args)
    if len(args) > 1:
        return [to_qa_input(arg) for arg in args]
    if args:
        inputs = args[0]
    elif "X" in keywords or "data" in keywords:
        inputs = keywords.get("X", keywords.get("data"))
    elif "question" in keywords and "context" in keywords:
        question, context = keywords["question"], keywords["context"]
        if isinstance(question, list) and isinstance(context, list):
            if len(question) != len(context):
                raise ValueError(f"got {len(question)} questions but {len(context)} contexts; pass one context per question")
            return [QuestionAnsweringInput(q, c) for q, c in zip(question, context)]
        if isinstance(question, list) and (context is None or isinstance(context, str)):
            return [QuestionAnsweringInput(q, context) for q in question]
        if isinstance(question, (str, type(None))) and isinstance(context, (str, type(None))):
            return QuestionAnsweringInput(question, context)
        raise ValueError(
            f"question= and context= take strings or lists of strings, got {type(question).__name__} "
            f"and {type(context).__name__}"
        )
    else:
        raise ValueError(f"pass a question and a context, e.g. qa(question=..., context=...); got keywords {sorted(keywords)}")

    if isinstance(inputs, (Iterator, Dataset)):
        return inputs
    if isinstance(inputs, (list, tuple)):
        inputs = [to_qa_input(item) for item in inputs]
        return inputs[0] if len(inputs) == 1 else inputs
    return to_qa_input(inputs)


def _masked_softmax(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    return logits.float().masked_fill(~allowed, float("-inf")).softmax(-1)


def best_spans(start_probs, end_probs, candidates: torch.Tensor, top_k: int, max_answer_len: int):
    """The ``top_k`` (start, end, score) token spans with start <= end < start + max_answer_len, both candidates."""
    length = start_probs.shape[0]
    ones = torch.ones(length, length, dtype=torch.bool)
    valid = ones.triu() & ~ones.triu(max_answer_len) & candidates[:, None] & candidates[None, :]
    scores = torch.where(valid, start_probs[:, None] * end_probs[None, :], -1.0)
    top = scores.flatten().topk(min(top_k, int(valid.sum())))
    return [(index // length, index % length, score) for index, score in zip(top.indices.tolist(), top.values.tolist())]


class QuestionAnsweringPipeline(ChunkPipeline):
    """Answer questions with spans of a context, using any ``ForQuestionAnswering`` model and a fast tokenizer."""

    default_input_names = "question,context"
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.check_model_type(MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES)
        if self.tokenizer is None or not self.tokenizer.is_fast:
            raise ValueError(
                f"question-answering needs a fast tokenizer (it maps answers back to the context with offsets); "
                f"got {type(self.tokenizer).__name__}."
            )

    def _sanitize_parameters(
        self,
        padding=None,
        top_k=None,
        doc_stride=None,
        max_answer_len=None,
        max_seq_len=None,
        handle_impossible_answer=None,
        align_to_words=None,
        **unknown,
    ):
        if unknown:
            raise TypeError(f"{type(self).__name__} got unknown parameter(s) {sorted(unknown)}")
        preprocess_params = {}
        for name, value in (("padding", padding), ("doc_stride", doc_stride), ("max_seq_len", max_seq_len)):
            if value is not None:
                preprocess_params[name] = value
        postprocess_params = {}
        for name, value in (("top_k", top_k), ("max_answer_len", max_answer_len)):
            if value is not None:
                if value < 1:
                    raise ValueError(f"{name} must be >= 1, got {value}")
                postprocess_params[name] = value
        if handle_impossible_answer is not None:
            if handle_impossible_answer and self.tokenizer.cls_token_id is None:
                raise ValueError(
                    "handle_impossible_answer scores the 'no answer' case on the CLS token, and "
                    f"{type(self.tokenizer).__name__} has none."
                )
            postprocess_params["handle_impossible_answer"] = handle_impossible_answer
        if align_to_words is not None:
            postprocess_params["align_to_words"] = align_to_words
        return preprocess_params, {}, postprocess_params

    def __call__(self, *args, **kwargs):
        """Answer ``question=..., context=...`` (or the other forms :func:`parse_qa_inputs` takes).

        Returns one answer dict, or a list of them with ``top_k > 1``; a list of inputs gives a list of those.
        """
        keywords = {key: kwargs.pop(key) for key in QA_INPUT_KEYWORDS if key in kwargs}
        return super().__call__(parse_qa_inputs(args, keywords), **kwargs)

    def preprocess(self, example, padding="do_not_pad", doc_stride=None, max_seq_len=None):
        example = to_qa_input(example)
        tokenizer = self.tokenizer
        if max_seq_len is None:
            max_seq_len = min(tokenizer.model_max_length, 384)
        if doc_stride is None:
            doc_stride = min(max_seq_len // 2, 128)
        if doc_stride >= max_seq_len:
            raise ValueError(f"doc_stride ({doc_stride}) must be smaller than max_seq_len ({max_seq_len})")
        question_first = tokenizer.padding_side == "right"
        encoded = tokenizer(
            *((example.question, example.context) if question_first else (example.context, example.question)),
            padding=padding,
            truncation="only_second" if question_first else "only_first",
            max_length=max_seq_len,
            stride=doc_stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )
        context_index = 1 if question_first else 0
        num_spans = len(encoded["input_ids"])
        for span in range(num_spans):
            input_ids = torch.tensor(encoded["input_ids"][span])
            sequence_ids = encoded.sequence_ids(span)
            word_ids = encoded.word_ids(span)
            model_inputs = {
                name: torch.tensor([encoded[name][span]]) for name in tokenizer.model_input_names if name in encoded
            }
            yield {
                **model_inputs,
                "context_mask": torch.tensor([[sid == context_index for sid in sequence_ids]]),
                "cls_mask": (input_ids == tokenizer.cls_token_id)[None] if tokenizer.cls_token_id is not None
                else torch.zeros(1, len(input_ids), dtype=torch.bool),
                "offset_mapping": torch.tensor([encoded["offset_mapping"][span]]),
                "word_ids": torch.tensor([[-1 if word is None else word for word in word_ids]]),
                "example": example,
                "is_last": span == num_spans - 1,
            }

    def _forward(self, inputs):
        model_inputs = {name: inputs[name] for name in self.tokenizer.model_input_names if name in inputs}
        output = self.model(**model_inputs)
        rest = {key: value for key, value in inputs.items() if key not in model_inputs}
        return {"start_logits": output.start_logits, "end_logits": output.end_logits, **rest}

    def postprocess(self, model_outputs, top_k=1, handle_impossible_answer=False, max_answer_len=15, align_to_words=True):
        answers = {}
        null_score = None
        for output in model_outputs:
            context = output["context_mask"][0].bool()
            cls = output["cls_mask"][0].bool()
            start = _masked_softmax(output["start_logits"][0], context | cls)
            end = _masked_softmax(output["end_logits"][0], context | cls)
            if handle_impossible_answer and cls.any():
                position = int(cls.nonzero()[0, 0])
                span_null_score = float(start[position] * end[position])
                null_score = span_null_score if null_score is None else min(null_score, span_null_score)
            offsets, word_ids = output["offset_mapping"][0], output["word_ids"][0]
            text = output["example"].context
            for start_token, end_token, score in best_spans(start, end, context, top_k, max_answer_len):
                char_start, char_end = int(offsets[start_token, 0]), int(offsets[end_token, 1])
                if align_to_words:
                    char_start = int(offsets[context & (word_ids == word_ids[start_token]), 0].min())
                    char_end = int(offsets[context & (word_ids == word_ids[end_token]), 1].max())
                # Overlapping windows (and word alignment) find the same answer more than once: keep its best score.
                if score > answers.get((char_start, char_end), {}).get("score", -1.0):
                    answers[(char_start, char_end)] = {
                        "score": score, "start": char_start, "end": char_end, "answer": text[char_start:char_end]
                    }
        ranked = list(answers.values())
        if handle_impossible_answer and null_score is not None:
            ranked.append({"score": null_score, "start": 0, "end": 0, "answer": ""})
        ranked = sorted(ranked, key=lambda answer: answer["score"], reverse=True)[:top_k]
        return ranked[0] if top_k == 1 else ranked
