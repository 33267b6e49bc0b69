"""Token classification (NER, POS): entity F1/precision/recall and token accuracy, each word from its first sub-token."""

from .metrics import entity_scores
from .task_evaluation import DataError, TaskEvaluation, model_device


class TokenClassification(TaskEvaluation):
    metrics = ("f1", "precision", "recall", "accuracy")
    columns = {"tokens": ("tokens", "words"), "tags": ("ner_tags", "tags", "labels", "pos_tags")}
    column_kinds = {"tokens": "words", "tags": "tags"}
    needs_fast_tokenizer = True

    def encode(self, evaluator, rows):
        words = [list(evaluator.column(row, "tokens")) for row in rows]
        return evaluator.tokenizer(words, is_split_into_words=True, padding=True, truncation=True,
                                   max_length=evaluator.max_length, return_tensors="pt")

    def predict(self, evaluator, model, rows):
        inputs = self.encode(evaluator, rows)
        id2label = model.config.id2label
        outside = "O" if "O" in id2label.values() else id2label[0]
        label_ids = model(**inputs.to(model_device(model))).logits.argmax(-1).tolist()
        predictions = []
        for index, row in enumerate(rows):
            word_tags = [outside] * len(evaluator.column(row, "tokens"))
            seen = set()
            for position, word_id in enumerate(inputs.word_ids(index)):
                if word_id is not None and word_id not in seen:
                    seen.add(word_id)
                    word_tags[word_id] = id2label[label_ids[index][position]]
            predictions.append(word_tags)
        return predictions

    def references(self, evaluator, model, rows):
        words_column, tags_column = evaluator.columns["tokens"], evaluator.columns["tags"]
        labels = set(model.config.id2label.values())
        references, names = [], None
        for row in rows:
            words, tags = evaluator.column(row, "tokens"), list(evaluator.column(row, "tags"))
            if len(tags) != len(words):
                raise DataError(f"column {words_column!r} holds {len(words)} words and column {tags_column!r} "
                                f"{len(tags)} tags: each word needs one tag.")
            if any(not isinstance(tag, str) for tag in tags):
                names = names or self._tag_names(evaluator, model)
                wrong = next((tag for tag in tags if not isinstance(tag, str) and not 0 <= tag < len(names)), None)
                if wrong is not None:
                    raise DataError(f"tag {wrong} (column {tags_column!r}) is not a tag id 0..{len(names) - 1}.")
                tags = [tag if isinstance(tag, str) else names[tag] for tag in tags]
            unknown = next((tag for tag in tags if tag not in labels), None)
            if unknown is not None:
                raise DataError(f"tag {unknown!r} (column {tags_column!r}) is not one of the model's labels "
                                f"{sorted(labels)}; the dataset and the model do not belong together.")
            references.append(tags)
        return references

    @staticmethod
    def _tag_names(evaluator, model) -> list[str]:
        if evaluator.label_names is not None:
            return evaluator.label_names
        feature = evaluator.dataset.features[evaluator.columns["tags"]]
        names = getattr(getattr(feature, "feature", None), "names", None)
        if names:
            return list(names)
        id2label = getattr(model.config, "id2label", None) or {}
        return [id2label[i] for i in sorted(id2label)]

    def reduce(self, evaluator, model, predictions, references):
        return entity_scores(predictions, references)
