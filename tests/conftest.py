"""Tiny seeded transformers models, built from configs and saved through the real save_pretrained."""

import hub_server

# huggingface_hub reads its endpoint when first imported (transformers imports it): point it at the
# loopback test Hub now. The server only accepts connections inside the `hub` fixture (test_hub.py).
HUB = hub_server.HubServer(users={"alice": "hf_alice_token", "bob": "hf_bob_token"})
HUB.configure_clients()

import copy
import dataclasses
import subprocess
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForQuestionAnswering,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    BartConfig,
    BertConfig,
    DistilBertConfig,
    GPT2Config,
    LlamaConfig,
    RobertaConfig,
    T5Config,
)

import optimum_int8

SHARED = Path(__file__).resolve().parents[2] / "shared"
LEGACY_FIXTURES = SHARED / "fixtures" / "legacy_inc"
VOCAB = 99


@dataclasses.dataclass
class TinyArch:
    name: str
    config: object
    auto_class: type
    inc_class: type
    is_seq2seq: bool = False

    def build(self, seed: int = 0):
        torch.manual_seed(seed)
        return self.auto_class.from_config(copy.deepcopy(self.config)).eval()

    def inputs(self, seed: int = 1) -> dict:
        generator = torch.Generator().manual_seed(seed)
        input_ids = torch.randint(4, VOCAB, (2, 12), generator=generator)
        inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
        if self.is_seq2seq:
            inputs["decoder_input_ids"] = input_ids[:, :7]
        return inputs


def _bert_kwargs():
    return dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                max_position_embeddings=64)


TINY_ARCHS = {
    "bart": TinyArch(
        "bart",
        BartConfig(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                   decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64),
        AutoModelForSeq2SeqLM, optimum_int8.INCModelForSeq2SeqLM, is_seq2seq=True,
    ),
    "t5": TinyArch(
        "t5",
        T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
                 decoder_start_token_id=0),
        AutoModelForSeq2SeqLM, optimum_int8.INCModelForSeq2SeqLM, is_seq2seq=True,
    ),
    "bert": TinyArch("bert", BertConfig(**_bert_kwargs(), num_labels=3),
                     AutoModelForSequenceClassification, optimum_int8.INCModelForSequenceClassification),
    "roberta": TinyArch("roberta", RobertaConfig(**_bert_kwargs(), pad_token_id=1),
                        AutoModelForMaskedLM, optimum_int8.INCModelForMaskedLM),
    "distilbert": TinyArch(
        "distilbert",
        DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64),
        AutoModelForQuestionAnswering, optimum_int8.INCModelForQuestionAnswering,
    ),
    "gpt2": TinyArch("gpt2", GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                        bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1),
                     AutoModelForCausalLM, optimum_int8.INCModelForCausalLM),
    "bert_tokens": TinyArch("bert_tokens", BertConfig(**_bert_kwargs(), num_labels=5),
                            AutoModelForTokenClassification, optimum_int8.INCModelForTokenClassification),
}


# A Llama-family decoder (RMSNorm, SwiGLU, grouped-query attention): the LLM schemes' architecture.
TINY_LLAMA = TinyArch(
    "llama",
    LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=64, bos_token_id=1, eos_token_id=2),
    AutoModelForCausalLM, optimum_int8.INCModelForCausalLM,
)


@pytest.fixture(autouse=True, scope="session")
def single_thread():
    """Tiny models gain nothing from threads, and two torch threads on a busy 2-core machine wait on each
    other for milliseconds per op. The legacy fixtures' reference outputs were computed with one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def mounted_tmpfs(tmp_path):
    """Mount a tiny tmpfs (options given to the returned function); skipped where mounting is not allowed."""
    mounted = []

    def mount(options: str) -> Path:
        point = tmp_path / f"mnt{len(mounted)}"
        point.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {result.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], check=False)


@pytest.fixture(params=sorted(TINY_ARCHS))
def arch(request) -> TinyArch:
    return TINY_ARCHS[request.param]


@pytest.fixture
def bart() -> TinyArch:
    return TINY_ARCHS["bart"]


@pytest.fixture
def fp32_dir(tmp_path, arch) -> Path:
    path = tmp_path / f"{arch.name}-fp32"
    arch.build().save_pretrained(path)
    return path


@pytest.fixture
def bart_fp32_dir(tmp_path, bart) -> Path:
    path = tmp_path / "bart-fp32"
    bart.build().save_pretrained(path)
    return path


def run(model, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        output = model(**inputs)
    if "logits" in output:
        return output.logits
    return torch.stack([output.start_logits, output.end_logits])
