"""Built-in model shapes with random, seeded weights, so a benchmark needs no download.

A preset saves an fp32 checkpoint that every variant is then built from, and carries the workload sizes
that fit it (a tiny model gets tiny inputs). Add one with ``register_preset``.
"""

import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import BartConfig, BartForConditionalGeneration, LlamaConfig, LlamaForCausalLM, PreTrainedModel


@dataclasses.dataclass(frozen=True)
class ModelPreset:
    """A model architecture and shape; ``build`` returns it with random weights (seeded by the caller)."""

    name: str
    description: str
    build: Callable[[], PreTrainedModel]
    # Per-workload size overrides for this preset: {"greedy": {"prompt_length": 32}, ...}.
    sizes: dict = dataclasses.field(default_factory=dict)

    def save(self, directory: Path, seed: int) -> None:
        torch.manual_seed(seed)
        self.build().eval().save_pretrained(directory)


PRESETS: dict[str, ModelPreset] = {}


def register_preset(preset: ModelPreset) -> ModelPreset:
    PRESETS[preset.name] = preset
    return preset


# facebook/bart-large-cnn's architecture (its config.json), without its weights.
BART_LARGE_CNN_SHAPE = dict(
    vocab_size=50264, d_model=1024, encoder_layers=12, decoder_layers=12, encoder_attention_heads=16,
    decoder_attention_heads=16, encoder_ffn_dim=4096, decoder_ffn_dim=4096, max_position_embeddings=1024,
    forced_bos_token_id=0,
)

register_preset(ModelPreset(
    "bart-large-cnn",
    "BART-large-CNN shapes (12+12 layers, d_model 1024, FFN 4096, vocab 50264), random weights",
    lambda: BartForConditionalGeneration(BartConfig(**BART_LARGE_CNN_SHAPE)),
))
register_preset(ModelPreset(
    "tiny",
    "a 2+2-layer BART with d_model 64, for tests",
    lambda: BartForConditionalGeneration(BartConfig(
        vocab_size=1000, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=128,
    )),
    sizes={
        "greedy": dict(prompt_length=32, new_tokens=8),
        "beam": dict(prompt_length=32, new_tokens=8),
        "encoder": dict(batch=2, length=32),
    },
))

# HuggingFaceTB/SmolLM2-135M's architecture (a Llama: 30 layers, hidden 576, 9 heads, 3 key/value heads), without
# its weights; examples/llm_schemes_smollm2.py measures the real model's perplexity.
SMOLLM2_135M_SHAPE = dict(
    vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
    num_key_value_heads=3, max_position_embeddings=2048, rope_theta=100000.0, tie_word_embeddings=True,
    bos_token_id=1, eos_token_id=2,
)

register_preset(ModelPreset(
    "smollm2-135m",
    "SmolLM2-135M shapes (Llama, 30 layers, hidden 576, GQA 9/3 heads, vocab 49152), random weights",
    lambda: LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M_SHAPE)),
))
register_preset(ModelPreset(
    "tiny-llama",
    "a 2-layer Llama with hidden 64, for tests",
    lambda: LlamaForCausalLM(LlamaConfig(
        vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1, eos_token_id=2,
    )),
    sizes={"prefill": dict(prompt_length=32), "decode": dict(prompt_length=32, new_tokens=8)},
))
