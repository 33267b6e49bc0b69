"""Seq2seq pipelines transformers 5 removed: text2text-generation, summarization and translation.

They behave like the transformers 4 pipelines of the same names (outputs ``generated_text`` /
``summary_text`` / ``translation_text``, ``batch_size``, ``truncation``, generation kwargs on top of
the model's generation config and its ``task_specific_params``) and are built on transformers 5's
``Pipeline`` base, so generation parameters are merged the way its text-generation pipeline merges them.
"""

import enum

from transformers import GenerationConfig, Pipeline
from transformers.models.auto.modeling_auto import MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES
from transformers.tokenization_utils_base import TruncationStrategy
from transformers.utils import ModelOutput, logging

logger = logging.get_logger(__name__)


class ReturnType(enum.Enum):
    TENSORS = 0
    TEXT = 1


class Text2TextGenerationPipeline(Pipeline):
    """Generate text from text with an encoder-decoder model (task ``"text2text-generation"``).

    Each input gives a list of ``{"generated_text": str}`` (one per returned sequence), or
    ``{"generated_token_ids": tensor}`` with ``return_tensors=True``. Unless the call, the pipeline or
    the model's generation config says otherwise, it decodes with ``max_new_tokens=256, num_beams=4``.
    """

    return_name = "generated"

    _pipeline_calls_generate = True
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = True
    _default_generation_config = GenerationConfig(max_new_tokens=256, num_beams=4)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.check_model_type(MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES)
        if not self.model.can_generate():
            raise ValueError(
                f"{type(self).__name__} needs a model that can generate, such as BART or T5; "
                f"{type(self.model).__name__} cannot."
            )
        task_params = dict((getattr(self.model.config, "task_specific_params", None) or {}).get(self.task, {}))
        if "prefix" in task_params:
            self.prefix = task_params.pop("prefix")
        # The task's parameters (e.g. T5's "summarize: " settings) override the model's generation
        # config; parameters passed to the pipeline override them.
        self._generate_kwargs = {**task_params, **self._generate_kwargs}

    def _sanitize_parameters(
        self,
        return_tensors=None,
        return_text=None,
        return_type=None,
        clean_up_tokenization_spaces=None,
        truncation=None,
        stop_sequence=None,
        **generate_kwargs,
    ):
        preprocess_params = {}
        if truncation is not None:
            preprocess_params["truncation"] = truncation

        if stop_sequence is not None:
            generate_kwargs["stop_strings"] = [stop_sequence] if isinstance(stop_sequence, str) else list(stop_sequence)
            generate_kwargs["tokenizer"] = self.tokenizer
        if getattr(self, "assistant_model", None) is not None:
            generate_kwargs["assistant_model"] = self.assistant_model
            if self.assistant_tokenizer is not None:
                generate_kwargs["tokenizer"] = self.tokenizer
                generate_kwargs["assistant_tokenizer"] = self.assistant_tokenizer

        postprocess_params = {}
        if return_tensors is not None and return_type is None:
            return_type = ReturnType.TENSORS if return_tensors else ReturnType.TEXT
        elif return_text is not None and return_type is None:
            return_type = ReturnType.TEXT if return_text else ReturnType.TENSORS
        if return_type is not None:
            postprocess_params["return_type"] = return_type
        if clean_up_tokenization_spaces is not None:
            postprocess_params["clean_up_tokenization_spaces"] = clean_up_tokenization_spaces
        return preprocess_params, generate_kwargs, postprocess_params

    def __call__(self, inputs, **kwargs):
        """Generate for one text or a list of texts.

        A list of texts gives a flat list of records when each input returns one sequence, and a
        list of lists otherwise (``num_return_sequences > 1``), as in transformers 4.
        """
        result = super().__call__(inputs, **kwargs)
        if isinstance(inputs, list) and all(isinstance(item, str) for item in inputs) and all(len(r) == 1 for r in result):
            return [records[0] for records in result]
        return result

    def check_inputs(self, input_length: int, generation_params: dict) -> None:
        """Hook for subclasses: warn when the lengths asked for look wrong for the task."""

    def _check_text(self, text) -> None:
        if not isinstance(text, str):
            raise ValueError(
                f"{type(self).__name__} takes a string or a list of strings, got {type(text).__name__}: {text!r}"
            )

    def _tokenize(self, text, truncation):
        self._check_text(text)
        prefix = self.prefix or ""
        inputs = self.tokenizer(prefix + text, truncation=truncation, return_tensors="pt")
        inputs.pop("token_type_ids", None)  # tokenizers may add it; generate() does not take it
        return inputs

    def preprocess(self, inputs, truncation=TruncationStrategy.DO_NOT_TRUNCATE):
        return self._tokenize(inputs, truncation)

    def _forward(self, model_inputs, **generate_kwargs):
        batch_size, input_length = model_inputs["input_ids"].shape
        forced_bos = model_inputs.pop("forced_bos_token_id", None)
        if forced_bos is not None and "forced_bos_token_id" not in generate_kwargs:
            # A multilingual tokenizer's target language; collated batches carry it once per row.
            generate_kwargs["forced_bos_token_id"] = int(forced_bos[0] if isinstance(forced_bos, list) else forced_bos)
        generate_kwargs = self._prepare_generate_kwargs(generate_kwargs)
        self.check_inputs(input_length, self._get_set_generation_params(generate_kwargs))
        output = self.model.generate(**model_inputs, **generate_kwargs)
        output_ids = output.sequences if isinstance(output, ModelOutput) else output
        return {"output_ids": output_ids.reshape(batch_size, -1, output_ids.shape[-1])}

    def postprocess(self, model_outputs, return_type=ReturnType.TEXT, clean_up_tokenization_spaces=False):
        records = []
        for output_ids in model_outputs["output_ids"][0]:
            if return_type == ReturnType.TENSORS:
                records.append({f"{self.return_name}_token_ids": output_ids})
            else:
                text = self.tokenizer.decode(
                    output_ids, skip_special_tokens=True, clean_up_tokenization_spaces=clean_up_tokenization_spaces
                )
                records.append({f"{self.return_name}_text": text})
        return records


class SummarizationPipeline(Text2TextGenerationPipeline):
    """Summarize documents (task ``"summarization"``): records ``{"summary_text": str}``."""

    return_name = "summary"

    def check_inputs(self, input_length: int, generation_params: dict) -> None:
        if "max_new_tokens" in generation_params or "max_length" not in generation_params:
            return
        max_length = generation_params["max_length"]
        min_length = generation_params.get("min_length", 0)
        if max_length < min_length:
            logger.warning(f"Your min_length={min_length} must be smaller than your max_length={max_length}.")
        if input_length < max_length:
            logger.warning(
                f"Your max_length is set to {max_length}, but your input_length is only {input_length}. A summary is "
                f"usually shorter than its input: consider a smaller max_length, e.g. summarizer('...', "
                f"max_length={input_length // 2})."
            )


class TranslationPipeline(Text2TextGenerationPipeline):
    """Translate text (tasks ``"translation"`` and ``"translation_xx_to_yy"``): records ``{"translation_text": str}``.

    ``translation_xx_to_yy`` sets ``src_lang="xx"`` and ``tgt_lang="yy"``; multilingual tokenizers
    (mBART, NLLB, M2M100) use them to build their inputs and force the target language token.
    """

    return_name = "translation"

    def _sanitize_parameters(self, src_lang=None, tgt_lang=None, **kwargs):
        preprocess_params, forward_params, postprocess_params = super()._sanitize_parameters(**kwargs)
        if src_lang is not None:
            preprocess_params["src_lang"] = src_lang
        if tgt_lang is not None:
            preprocess_params["tgt_lang"] = tgt_lang
        if src_lang is None and tgt_lang is None:
            parts = self.task.split("_")
            if len(parts) == 4 and parts[0] == "translation" and parts[2] == "to":
                preprocess_params["src_lang"], preprocess_params["tgt_lang"] = parts[1], parts[3]
        return preprocess_params, forward_params, postprocess_params

    def check_inputs(self, input_length: int, generation_params: dict) -> None:
        if "max_new_tokens" in generation_params or "max_length" not in generation_params:
            return
        max_length = generation_params["max_length"]
        if input_length > 0.9 * max_length:
            logger.warning(
                f"Your input_length: {input_length} is bigger than 0.9 * max_length: {max_length}. The translation "
                "may be cut short: consider a larger max_length, e.g. translator('...', max_length=400)."
            )

    def preprocess(self, inputs, truncation=TruncationStrategy.DO_NOT_TRUNCATE, src_lang=None, tgt_lang=None):
        build_inputs = getattr(self.tokenizer, "_build_translation_inputs", None)
        self._check_text(inputs)
        if build_inputs is None:
            return self._tokenize(inputs, truncation)
        return build_inputs(inputs, return_tensors="pt", truncation=truncation, src_lang=src_lang, tgt_lang=tgt_lang)
