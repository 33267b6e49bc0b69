"""optimum_int8.pipeline on tiny int8 models, passed as objects and as saved directories, with a real tokenizer.

The four tasks transformers 5 removed are checked against the behaviours transformers 4's pipeline tests
checked (tests/pipelines/test_pipelines_{summarization,text2text_generation,translation,question_answering}.py);
the tasks transformers still has are checked through the deferral to transformers.pipeline.
"""

import copy
import json
import logging
import math
import string

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import AutoModel, PreTrainedTokenizerFast
from transformers.tokenization_utils_base import TruncationStrategy

from optimum_int8 import INCModelForSeq2SeqLM, Int8Config, quantize_model
from optimum_int8.pipelines import (
    QuestionAnsweringInput,
    QuestionAnsweringPipeline,
    SummarizationPipeline,
    Text2TextGenerationPipeline,
    TranslationPipeline,
    pipeline,
)
from optimum_int8.pipelines.question_answering import parse_qa_inputs

from conftest import LEGACY_FIXTURES, TINY_ARCHS

CORPUS = [
    "HuggingFace was founded in Paris.",
    "The quick brown fox jumps over the lazy dog.",
    "Quantization stores weights as small integers, so models load fast and run fast.",
    "Translate this sentence and summarize that article.",
]
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
QUESTION, CONTEXT = "Where was HuggingFace founded ?", "HuggingFace was founded in Paris."
ENTAILMENT_LABELS = {0: "contradiction", 1: "neutral", 2: "entailment"}
T5_TASK_PARAMS = {"translation_en_to_de": {"prefix": "translate english to german: ", "max_length": 9, "num_beams": 2}}
SHORT = {"max_new_tokens": 6}  # the tiny seq2seq models have 64 positions; the pipelines' default is 256 new tokens


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A BERT-style WordPiece tokenizer from the tokenizers library, its vocabulary built from CORPUS.

    The vocabulary is the corpus' words plus single characters (so other words split into word pieces),
    listed in a fixed order: tokenizers' trainers break ties in hash order and give other ids every run.
    """
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words = sorted({word for text in CORPUS for word, _ in pre_tokenizer.pre_tokenize_str(text.lower())})
    characters = list(string.ascii_lowercase + string.digits + string.punctuation)
    pieces = ["##" + character for character in string.ascii_lowercase + string.digits]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(SPECIAL_TOKENS + words + characters + pieces))}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizer
    backend.decoder = decoders.WordPiece()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=64,
    )


TOKENIZER = build_tokenizer()
CLS, SEP, PAD = TOKENIZER.cls_token_id, TOKENIZER.sep_token_id, TOKENIZER.pad_token_id

# checkpoint name -> (TINY_ARCHS entry, Auto class override, config updates for the tokenizer's ids)
CHECKPOINTS = {
    # Untied: a tiny random BART with tied embeddings repeats its decoder start token (EOS) and says nothing.
    "bart": ("bart", None, dict(bos_token_id=CLS, eos_token_id=SEP, decoder_start_token_id=SEP, forced_eos_token_id=SEP,
                                tie_word_embeddings=False)),
    "t5": ("t5", None, dict(eos_token_id=SEP, decoder_start_token_id=PAD, task_specific_params=T5_TASK_PARAMS)),
    "distilbert": ("distilbert", None, {}),
    "bert": ("bert", None, dict(id2label=ENTAILMENT_LABELS, label2id={v: k for k, v in ENTAILMENT_LABELS.items()})),
    "bert_tokens": ("bert_tokens", None, {}),
    "bert_base": ("bert", AutoModel, {}),
    "roberta": ("roberta", None, dict(bos_token_id=CLS, eos_token_id=SEP)),
    "gpt2": ("gpt2", None, dict(bos_token_id=CLS, eos_token_id=SEP)),
}


@pytest.fixture(scope="module")
def int8_checkpoint(tmp_path_factory):
    """checkpoint name -> (int8 model, directory holding that model and the tokenizer)."""
    built = {}

    def get(name):
        if name not in built:
            arch_name, auto_class, updates = CHECKPOINTS[name]
            arch = TINY_ARCHS[arch_name]
            config = copy.deepcopy(arch.config)
            config.update({"vocab_size": len(TOKENIZER), "pad_token_id": PAD, **updates})
            torch.manual_seed(0)
            model = quantize_model((auto_class or arch.auto_class).from_config(config).eval(), Int8Config())
            path = tmp_path_factory.mktemp(name)
            model.save_pretrained(path)
            TOKENIZER.save_pretrained(path)
            built[name] = model, path
        return built[name]

    return get


@pytest.fixture
def tokenizer():
    return copy.deepcopy(TOKENIZER)  # pipelines may change a tokenizer (text-generation pads on the left)


class WarningLog:
    """Python warnings, and log records at WARNING or above from transformers and everything else, since reset()."""

    def __init__(self, caplog, recwarn):
        self.caplog, self.recwarn = caplog, recwarn

    def reset(self):
        self.caplog.clear()
        self.recwarn.clear()

    def messages(self) -> list[str]:
        logged = [record.getMessage() for record in self.caplog.records if record.levelno >= logging.WARNING]
        return logged + [str(warning.message) for warning in self.recwarn]


@pytest.fixture
def warning_log(caplog, recwarn):
    library_logger = logging.getLogger("transformers")  # does not propagate to the root logger caplog watches
    library_logger.addHandler(caplog.handler)
    caplog.set_level(logging.WARNING)
    try:
        yield WarningLog(caplog, recwarn)
    finally:
        library_logger.removeHandler(caplog.handler)


def both_ways(int8_checkpoint, tokenizer, checkpoint: str, task: str, warning_log=None, **kwargs):
    """The same pipeline built from the int8 model object and from its directory.

    With ``warning_log``, what building the checkpoint logged is dropped: only the pipelines are watched.
    """
    model, path = int8_checkpoint(checkpoint)
    if warning_log is not None:
        warning_log.reset()
    return pipeline(task, model=model, tokenizer=tokenizer, **kwargs), pipeline(task, model=str(path), **kwargs)


# -- the tasks transformers 5 removed ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "task, pipeline_class, key",
    [
        ("summarization", SummarizationPipeline, "summary_text"),
        ("text2text-generation", Text2TextGenerationPipeline, "generated_text"),
        ("translation_en_to_fr", TranslationPipeline, "translation_text"),
    ],
)
def test_seq2seq_task_from_object_and_path(int8_checkpoint, tokenizer, warning_log, task, pipeline_class, key):
    from_object, from_path = both_ways(int8_checkpoint, tokenizer, "bart", task, warning_log, **SHORT)
    for generator in (from_object, from_path):
        assert type(generator) is pipeline_class
        assert generator.device == torch.device("cpu")
        assert generator.model.quantization_method == "optimum_int8"
    text = "The quick brown fox jumps over the lazy dog."
    outputs = from_object(text)
    assert outputs == [{key: outputs[0][key]}] and isinstance(outputs[0][key], str)
    assert from_path(text) == outputs  # a reloaded int8 model gives the same tokens
    assert from_path([text, "HuggingFace was founded in Paris."]) == [outputs[0], from_path("HuggingFace was founded in Paris.")[0]]
    assert warning_log.messages() == []


def test_unsupported_model_is_reported(int8_checkpoint, tokenizer, warning_log):
    """The check that stays quiet for the int8 models above does speak for a model the task cannot use."""
    classifier, _ = int8_checkpoint("bert")
    warning_log.reset()
    with pytest.raises(ValueError, match="can generate"):
        pipeline("summarization", model=classifier, tokenizer=tokenizer)
    assert any("not supported for summarization" in message for message in warning_log.messages())


def test_summarization_generation_kwargs_and_model_defaults(int8_checkpoint, tokenizer):
    model, _ = int8_checkpoint("bart")
    summarizer = pipeline("summarization", model=model, tokenizer=tokenizer)
    tokens = summarizer("The quick brown fox", num_beams=2, min_length=2, max_length=5, return_tensors=True)
    assert len(tokens) == 1 and 2 <= len(tokens[0]["summary_token_ids"]) <= 5
    assert summarizer("The quick brown fox", num_beams=2, min_length=2, max_length=5)[0].keys() == {"summary_text"}

    # Init kwargs apply to every call; the call's own kwargs win.
    summarizer = pipeline("summarization", model=model, tokenizer=tokenizer, max_new_tokens=3)
    assert len(summarizer("The quick brown fox", return_tensors=True)[0]["summary_token_ids"]) <= 1 + 3
    assert len(summarizer("The quick brown fox", max_new_tokens=7, min_new_tokens=7, return_tensors=True)[0]["summary_token_ids"]) == 1 + 7

    # The model's generation config is honoured (here: greedy instead of the pipeline's num_beams=4 default).
    greedy = INCModelForSeq2SeqLM.from_pretrained(int8_checkpoint("bart")[1])
    greedy.generation_config.num_beams = 1
    expected = greedy.generate(**tokenizer("The quick brown fox", return_tensors="pt"), max_new_tokens=6, num_beams=1)
    got = pipeline("summarization", model=greedy, tokenizer=tokenizer, **SHORT)("The quick brown fox", return_tensors=True)
    assert torch.equal(got[0]["summary_token_ids"], expected[0])


def test_summarization_truncation(int8_checkpoint, tokenizer):
    summarizer = pipeline("summarization", model=int8_checkpoint("bart")[0], tokenizer=tokenizer, **SHORT)
    with pytest.raises(IndexError):  # 1000 tokens do not fit BART's 64 positions
        summarizer("This " * 1000)
    for truncation in (TruncationStrategy.ONLY_FIRST, True):
        assert summarizer("This " * 1000, truncation=truncation)[0].keys() == {"summary_text"}


def test_text2text_generation_batches_and_return_types(int8_checkpoint, tokenizer):
    generator = pipeline("text2text-generation", model=int8_checkpoint("bart")[0], tokenizer=tokenizer, **SHORT)
    outputs = generator("Something there")
    assert outputs == [{"generated_text": outputs[0]["generated_text"]}]
    assert not outputs[0]["generated_text"].startswith("something there")  # encoder-decoder: no echo of the input

    texts = ["This is great !", "Something else"]
    for batch_size in (1, 2):
        torch.manual_seed(0)
        sampled = generator(texts, num_return_sequences=2, do_sample=True, batch_size=batch_size)
        assert [[record.keys() for record in records] for records in sampled] == [[{"generated_text"}] * 2] * 2
    batched = generator(texts, batch_size=2)  # padded together: int8 activation scales differ from one-by-one runs
    assert [record.keys() for record in batched] == [{"generated_text"}] * 2

    tensors = generator("This is a test", do_sample=True, num_return_sequences=2, return_tensors=True)
    assert [type(record["generated_token_ids"]) for record in tensors] == [torch.Tensor, torch.Tensor]
    assert generator("This is a test", return_text=False)[0].keys() == {"generated_token_ids"}
    with pytest.raises(ValueError, match="string"):
        generator(4)


def test_text2text_stop_sequence(int8_checkpoint, tokenizer):
    generator = pipeline("text2text-generation", model=int8_checkpoint("bart")[0], tokenizer=tokenizer, num_beams=1)
    full = generator("The quick brown fox", max_new_tokens=12, return_tensors=True)[0]["generated_token_ids"].tolist()
    tokens = tokenizer.convert_ids_to_tokens(full)
    position = next(i for i in range(3, len(full)) if tokens[i].isalpha())  # a whole-word token, not the first
    stopped = generator("The quick brown fox", max_new_tokens=12, stop_sequence=tokens[position], return_tensors=True)
    stopped = stopped[0]["generated_token_ids"].tolist()
    assert len(stopped) <= position + 1 and stopped == full[:len(stopped)] and tokens[position] in tokenizer.decode(stopped)


def test_translation_inputs_and_language_pairs(int8_checkpoint, tokenizer):
    model, _ = int8_checkpoint("bart")
    translator = pipeline("translation_en_to_fr", model=model, tokenizer=tokenizer, **SHORT)
    assert (translator._preprocess_params["src_lang"], translator._preprocess_params["tgt_lang"]) == ("en", "fr")
    one = translator("Some string")
    assert one == [{"translation_text": one[0]["translation_text"]}]
    assert translator(["Some string"]) == one
    assert [r.keys() for r in translator(["Some string", "other string"])] == [{"translation_text"}] * 2
    odd = pipeline("translation_cn_to_ar", model=model, tokenizer=tokenizer)
    assert (odd._preprocess_params["src_lang"], odd._preprocess_params["tgt_lang"]) == ("cn", "ar")


def test_translation_uses_task_specific_params(int8_checkpoint, tokenizer):
    model, path = int8_checkpoint("t5")
    with pytest.warns(UserWarning, match="translation_en_to_de"):
        translator = pipeline("translation", model=str(path))
    assert translator.task == "translation_en_to_de"
    assert (translator._preprocess_params["src_lang"], translator._preprocess_params["tgt_lang"]) == ("en", "de")
    assert translator.prefix == "translate english to german: "
    expected_ids = tokenizer("translate english to german: the lazy dog", return_tensors="pt")["input_ids"]
    assert torch.equal(translator.preprocess("the lazy dog")["input_ids"], expected_ids)
    # max_length=9 and num_beams=2 from task_specific_params beat the pipeline's max_new_tokens=256 default.
    assert len(translator("the lazy dog", return_tensors=True)[0]["translation_token_ids"]) <= 9
    assert len(translator("the lazy dog", max_length=4, return_tensors=True)[0]["translation_token_ids"]) <= 4


class LanguageCodeTokenizer(PreTrainedTokenizerFast):
    """A multilingual-style tokenizer: the target language becomes the forced first generated token."""

    def _build_translation_inputs(self, raw_inputs, return_tensors, src_lang, tgt_lang, **extra_kwargs):
        if src_lang is None or tgt_lang is None:
            raise ValueError("Translation requires a `src_lang` and a `tgt_lang` for this model")
        inputs = self(raw_inputs, return_tensors=return_tensors, **extra_kwargs)
        inputs["forced_bos_token_id"] = self.convert_tokens_to_ids(tgt_lang)
        return inputs


def test_translation_multilingual_tokenizer(int8_checkpoint):
    tokenizer = LanguageCodeTokenizer(tokenizer_object=copy.deepcopy(TOKENIZER.backend_tokenizer), **TOKENIZER.special_tokens_map)
    model, _ = int8_checkpoint("bart")
    translator = pipeline("translation", model=model, tokenizer=tokenizer, **SHORT)
    with pytest.raises(ValueError, match="src_lang"):
        translator("This is a test")
    fox, dog = tokenizer.convert_tokens_to_ids(["fox", "dog"])
    for target, token in (("fox", fox), ("dog", dog)):
        output = translator("This is a test", src_lang="en", tgt_lang=target, return_tensors=True)
        assert output[0]["translation_token_ids"][1] == token  # after the decoder start token
    preset = pipeline("translation", model=model, tokenizer=tokenizer, src_lang="en", tgt_lang="dog", **SHORT)
    batched = preset(["This is a test", "The lazy dog"], batch_size=2, return_tensors=True)
    assert [records["translation_token_ids"][1] for records in batched] == [dog, dog]


# -- question answering ----------------------------------------------------------------------------------------


@pytest.fixture
def question_answerer(int8_checkpoint, tokenizer):
    return pipeline("question-answering", model=int8_checkpoint("distilbert")[0], tokenizer=tokenizer)


def assert_answer(answer, context=CONTEXT):
    assert answer.keys() == {"score", "start", "end", "answer"}
    assert isinstance(answer["score"], float) and 0.0 <= answer["score"] <= 1.0
    assert isinstance(answer["start"], int) and isinstance(answer["end"], int)
    assert answer["answer"] == context[answer["start"]:answer["end"]]


def test_question_answering_from_object_and_path(int8_checkpoint, tokenizer, warning_log):
    from_object, from_path = both_ways(int8_checkpoint, tokenizer, "distilbert", "question-answering", warning_log)
    assert type(from_object) is QuestionAnsweringPipeline and from_object.device == torch.device("cpu")
    answer = from_object(question=QUESTION, context=CONTEXT)
    assert_answer(answer)
    assert from_path(question=QUESTION, context=CONTEXT) == answer
    assert from_path(QUESTION, CONTEXT) == answer
    assert from_path({"question": QUESTION, "context": CONTEXT}) == answer
    assert warning_log.messages() == []


def test_question_answering_input_forms(question_answerer):
    assert_answer(question_answerer(question=QUESTION, context=CONTEXT, handle_impossible_answer=True))
    two = question_answerer(question=["In what field is HuggingFace working ?"] * 2, context=CONTEXT)
    assert len(two) == 2 and two[0] == two[1]
    contexts = ["HuggingFace is a startup based in New-York", "HuggingFace is a startup founded in Paris"]
    paired = question_answerer(question=["What field is HuggingFace working ?", "In what field is HuggingFace ?"], context=contexts)
    for answer, context in zip(paired, contexts):
        assert_answer(answer, context)
    for bad in [dict(question="", context=CONTEXT), dict(question=None, context=CONTEXT),
                dict(question=QUESTION, context=""), dict(question=QUESTION, context=None)]:
        with pytest.raises(ValueError):
            question_answerer(**bad)


def test_question_answering_argument_parsing():
    example = QuestionAnsweringInput(QUESTION, CONTEXT)
    as_dict = {"question": QUESTION, "context": CONTEXT}
    assert parse_qa_inputs((QUESTION, CONTEXT), {}) == example
    assert parse_qa_inputs((), {"question": QUESTION, "context": CONTEXT}) == example
    assert parse_qa_inputs((), {"question": [QUESTION, QUESTION], "context": CONTEXT}) == [example, example]
    assert parse_qa_inputs((), {"question": [QUESTION] * 2, "context": [CONTEXT] * 2}) == [example, example]
    assert parse_qa_inputs((as_dict,), {}) == example
    assert parse_qa_inputs(([as_dict],), {}) == example
    assert parse_qa_inputs(([as_dict, as_dict],), {}) == [example, example]
    assert parse_qa_inputs((), {"X": as_dict}) == example
    assert parse_qa_inputs((), {"X": [as_dict]}) == example
    assert parse_qa_inputs((), {"data": as_dict}) == example

    for missing in ({"context": CONTEXT}, {"question": QUESTION}):
        for args in ((missing,), ([missing],)):
            with pytest.raises(KeyError):
                parse_qa_inputs(args, {})
    bad_calls = [
        ((None, CONTEXT), {}), (("", CONTEXT), {}), ((QUESTION, None), {}), ((QUESTION, ""), {}),
        ((), {"question": None, "context": CONTEXT}), ((), {"question": QUESTION, "context": ""}),
        (([as_dict, {"question": None, "context": CONTEXT}],), {}), (([as_dict, {"question": QUESTION, "context": ""}],), {}),
        ((), {"question": {"This": "Is weird"}, "context": "This is a context"}),
        ((), {"question": [QUESTION] * 2, "context": [CONTEXT] * 3}), ((), {"question": [QUESTION] * 3, "context": [CONTEXT] * 2}),
        ((None,), {}), ((), {"Y": None}), ((1,), {}),
    ]
    for args, keywords in bad_calls:
        with pytest.raises(ValueError):
            parse_qa_inputs(args, keywords)


def test_question_answering_top_k_and_answer_length(question_answerer):
    answers = question_answerer(question=QUESTION, context=CONTEXT, top_k=5)
    assert len(answers) == 5
    for answer in answers:
        assert_answer(answer)
    assert [a["score"] for a in answers] == sorted((a["score"] for a in answers), reverse=True)
    assert len({(a["start"], a["end"]) for a in answers}) == 5  # overlapping candidates are merged, not repeated
    assert answers[0] == question_answerer(question=QUESTION, context=CONTEXT)
    with pytest.raises(ValueError, match="top_k"):
        question_answerer(question=QUESTION, context=CONTEXT, top_k=0)

    single_tokens = question_answerer(question=QUESTION, context=CONTEXT, top_k=3, max_answer_len=1, align_to_words=False)
    for answer in single_tokens:
        assert len(TOKENIZER.tokenize(answer["answer"])) == 1
    with pytest.raises(TypeError, match="max_answer_length"):
        question_answerer(question=QUESTION, context=CONTEXT, max_answer_length=3)


def test_question_answering_aligns_answers_to_words(question_answerer):
    context = "Zyx qwv founded mjk in Prqs by Vbnm."  # words outside the vocabulary split into one-letter pieces
    for align, want_whole_words in ((True, True), (False, False)):
        answers = question_answerer(question=QUESTION, context=context, top_k=10, align_to_words=align)
        starts_at_word = [a["start"] == 0 or context[a["start"] - 1] == " " for a in answers]
        ends_at_word = [a["end"] == len(context) or not context[a["end"]].isalnum() for a in answers]
        if want_whole_words:
            assert all(starts_at_word) and all(ends_at_word)
        else:
            assert not (all(starts_at_word) and all(ends_at_word))


def test_question_answering_impossible_answer(question_answerer):
    answers = question_answerer(question=QUESTION, context=CONTEXT, top_k=100, handle_impossible_answer=True)
    null_answers = [a for a in answers if a["answer"] == ""]
    assert null_answers == [{"score": null_answers[0]["score"], "start": 0, "end": 0, "answer": ""}]
    assert len(answers) > 1 and "" not in [a["answer"] for a in question_answerer(question=QUESTION, context=CONTEXT, top_k=100)]


def test_question_answering_long_context_spans_and_batches(question_answerer):
    context = CONTEXT * 20
    spans = list(question_answerer.preprocess(QuestionAnsweringInput(QUESTION, context), max_seq_len=32, doc_stride=8))
    assert len(spans) > 1 and [span["is_last"] for span in spans] == [False] * (len(spans) - 1) + [True]
    answer = question_answerer(question=QUESTION, context=context, max_seq_len=32, doc_stride=8)
    assert_answer(answer, context)
    batched = question_answerer(question=QUESTION, context=context, max_seq_len=32, doc_stride=8, batch_size=2)
    assert (batched["start"], batched["end"]) == (answer["start"], answer["end"])
    assert batched["score"] == pytest.approx(answer["score"], abs=1e-3)  # int8 activation scales span the batch
    with pytest.raises(ValueError, match="doc_stride"):
        question_answerer(question=QUESTION, context=context, max_seq_len=32, doc_stride=32)


def test_question_answering_streams_a_generator(question_answerer):
    single = question_answerer(question=QUESTION, context=CONTEXT)
    stream = question_answerer(({"question": QUESTION, "context": CONTEXT} for _ in range(5)), batch_size=2)
    for answer in stream:
        assert (answer["start"], answer["end"], answer["answer"]) == (single["start"], single["end"], single["answer"])


def test_question_answering_large_logits_give_finite_scores(question_answerer):
    example = QuestionAnsweringInput(QUESTION, CONTEXT)
    outputs = [question_answerer.forward(span) for span in question_answerer.preprocess(example)]
    for output in outputs:
        output["start_logits"], output["end_logits"] = output["start_logits"] * 1e6, output["end_logits"] * 1e6
    answer = question_answerer.postprocess(outputs, handle_impossible_answer=True)
    assert_answer(answer)
    assert math.isfinite(answer["score"])


# -- tasks transformers still has: deferred to transformers.pipeline --------------------------------------


DEFERRED = {
    "text-classification": ("bert", "The quick brown fox", {}),
    "zero-shot-classification": ("bert", "The quick brown fox", {"candidate_labels": ["animal", "city"]}),
    "token-classification": ("bert_tokens", "HuggingFace was founded in Paris", {}),
    "fill-mask": ("roberta", "The quick brown [MASK] jumps.", {}),
    "text-generation": ("gpt2", "The quick brown", {"max_new_tokens": 4, "do_sample": False}),
    "feature-extraction": ("bert_base", "The quick brown fox", {}),
}


def _plain(value):
    """Pipeline outputs with numpy scalars and tensors turned into Python numbers and lists."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value.tolist() if hasattr(value, "tolist") else value


@pytest.mark.parametrize("task", sorted(DEFERRED))
def test_deferred_task_from_object_and_path(int8_checkpoint, tokenizer, warning_log, task):
    checkpoint, text, call_kwargs = DEFERRED[task]
    from_object, from_path = both_ways(int8_checkpoint, tokenizer, checkpoint, task, warning_log)
    assert from_object.task == task and from_object.device == torch.device("cpu")
    assert from_path.model.quantization_method == "optimum_int8"
    outputs = _plain(from_object(text, **call_kwargs))
    assert outputs and _plain(from_path(text, **call_kwargs)) == outputs
    batched = _plain(from_path([text, text], batch_size=2, **call_kwargs))
    assert len(batched) == 2 and batched[0] == batched[1]
    assert warning_log.messages() == []


def test_task_aliases_and_pathlike(int8_checkpoint):
    _, path = int8_checkpoint("bert")
    assert pipeline("sentiment-analysis", model=path).task == "sentiment-analysis"
    assert pipeline("ner", model=int8_checkpoint("bert_tokens")[1]).task == "ner"


# -- loading and errors ------------------------------------------------------------------------------------


def test_tokenizer_from_another_directory(int8_checkpoint, tmp_path):
    """As in the README: the int8 model saved alone, the tokenizer read from the fp32 model's directory."""
    model, tokenizer_dir = int8_checkpoint("bart")
    model.save_pretrained(tmp_path)
    summarizer = pipeline("summarization", model=tmp_path, tokenizer=str(tokenizer_dir), **SHORT)
    assert summarizer("The quick brown fox") == pipeline("summarization", model=tokenizer_dir, **SHORT)("The quick brown fox")


def test_fp32_directory_quantized_while_loading(tmp_path, tokenizer):
    arch = TINY_ARCHS["distilbert"]
    config = copy.deepcopy(arch.config)
    config.update({"vocab_size": len(TOKENIZER), "pad_token_id": PAD})
    arch.auto_class.from_config(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    answerer = pipeline("question-answering", model=tmp_path, model_kwargs={"quantization_config": Int8Config()})
    assert answerer.model.quantization_method == "optimum_int8"
    assert_answer(answerer(question=QUESTION, context=CONTEXT))


@pytest.mark.parametrize("fixture", ["bart_seq2seq_dynamic", "t5_seq2seq_dynamic"])
def test_legacy_inc_seq2seq_checkpoint(fixture):
    """A legacy INC checkpoint directory summarizes exactly as the old stack generated (same batch, same padding)."""
    reference = json.loads((LEGACY_FIXTURES / fixture / "reference.json").read_text())
    summarizer = pipeline("summarization", model=LEGACY_FIXTURES / fixture, **reference["generate_kwargs"])
    outputs = summarizer(reference["sentences"], batch_size=len(reference["sentences"]), return_tensors=True)
    assert [output["summary_token_ids"].tolist() for output in outputs] == reference["generated_int8_loaded"]


def test_legacy_inc_classifier_checkpoint():
    reference = json.loads((LEGACY_FIXTURES / "bert_seqcls_dynamic" / "reference.json").read_text())
    classifier = pipeline("text-classification", model=LEGACY_FIXTURES / "bert_seqcls_dynamic", top_k=None, function_to_apply="none")
    outputs = classifier(reference["sentences"], batch_size=len(reference["sentences"]))
    logits = [[next(r["score"] for r in records if r["label"] == f"LABEL_{i}") for i in range(3)] for records in outputs]
    assert logits == reference["int8_loaded"]["logits"]


def test_repo_id_goes_to_the_loader(monkeypatch):
    """A repo id reaches INCModelForSeq2SeqLM.from_pretrained as given, with the Hub arguments."""
    repo_id = "optimum-int8-tests/not-a-local-directory"
    calls = []
    load = INCModelForSeq2SeqLM.from_pretrained.__func__

    def recording_load(cls, name_or_path, *args, **kwargs):
        calls.append((name_or_path, kwargs))
        return load(cls, name_or_path, *args, **kwargs)

    monkeypatch.setattr(INCModelForSeq2SeqLM, "from_pretrained", classmethod(recording_load))
    with pytest.raises(OSError):  # not in the (empty) cache, and local_files_only forbids asking the Hub
        pipeline("summarization", model=repo_id, local_files_only=True, revision="main")
    assert calls == [(repo_id, {"local_files_only": True, "revision": "main"})]


def test_errors(int8_checkpoint, tokenizer, tmp_path):
    model, path = int8_checkpoint("bart")
    with pytest.raises(ValueError, match="needs model="):
        pipeline("summarization")
    with pytest.raises(ValueError, match="needs tokenizer="):
        pipeline("summarization", model=model)
    with pytest.raises(TypeError, match="PreTrainedModel"):
        pipeline("summarization", model=object(), tokenizer=tokenizer)
    with pytest.raises(ValueError, match="model_kwargs"):
        pipeline("summarization", model=model, tokenizer=tokenizer, model_kwargs={"revision": "main"})
    with pytest.raises(ValueError, match="CPU"):
        pipeline("summarization", model=model, tokenizer=tokenizer, device="cuda")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pipeline("summarization", model=str(tmp_path / "missing" / "model"))
    with pytest.raises(KeyError, match="image-to-image"):
        pipeline("image-to-image", model=str(path))  # removed in transformers 5 and not provided here either
