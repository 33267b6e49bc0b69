"""Token classification (NER, POS): entity F1/precision/recall and token accuracy, each word from its first sub-token."""

from .metrics import entity_scores
from .task_evaluation import TaskEvaluation, model_device


class TokenClassification(TaskEvaluation):
    metrics = ("f1", "precision", "recall", "accuracy")
    columns = {"tokens": ("tokens", "words"), "tags": ("ner_tags", "tags", "labels", "pos_tags")}
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
        references, names = [], None
        for row in rows:
            tags = list(evaluator.column(row, "tags"))
            if tags and not isinstance(tags[0], str):
                names = names or self._tag_names(evaluator, model)
                tags = [names[int(tag)] for tag in tags]
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
