"""An fp32 transformers Llama checkpoint written as an F32 GGUF file, the input format of llama.cpp.

``write_gguf_f32(fp32_dir, path)`` does what llama.cpp's ``convert_hf_to_gguf.py`` does for a Llama with the
``gguf`` package's own tables: tensor names from its name map for ``MODEL_ARCH.LLAMA``, the standard
``llama.*`` hyperparameter keys, every tensor stored as float32 (``general.file_type`` ``ALL_F32``).

- Rotary embedding: transformers rotates the two halves of each head (dimension ``i`` with ``i + head_dim/2``),
  llama.cpp's ``llama`` graph rotates adjacent pairs (``2i`` with ``2i + 1``). So the rows of ``q_proj`` and
  ``k_proj`` (and their biases) are reordered within each head to interleave the halves; without it the
  attention scores, and the logits, differ. transformers' GGUF loader undoes the same reordering.
- Tied embeddings (SmolLM2's ``lm_head`` is ``embed_tokens``): no ``output.weight`` is written, and llama.cpp
  and transformers both read the token embedding table as the output projection.
- Vocabulary: llama.cpp refuses a model without ``tokenizer.ggml.model``. The file declares ``none``, llama.cpp's
  "no vocabulary" tokenizer, with ``llama.vocab_size`` entries: llama.cpp then sizes its logits from
  ``vocab_size`` with placeholder tokens. That is all the benchmark needs, since it feeds token ids and never
  text, and it works for the random-weight presets, which have no tokenizer. A real tokenizer is not carried
  over: a BPE one needs llama.cpp's pre-tokenizer identification (a hash of its outputs on probe strings),
  which is the converter's job, not a timing's.
"""

from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig

from .variants import load_float32

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)


def llama_config(fp32_dir: Path):
    """The checkpoint's config, once checked to be a Llama that the ``llama`` GGUF architecture represents."""
    config_file = Path(fp32_dir) / "config.json"
    config = AutoConfig.from_pretrained(fp32_dir)
    architectures = list(getattr(config, "architectures", None) or [])
    if not set(architectures) & set(SUPPORTED_ARCHITECTURES):
        raise ValueError(f"{config_file}: architectures {architectures} cannot be written as a llama.cpp GGUF file "
                         f"here; supported: {list(SUPPORTED_ARCHITECTURES)}.")
    rope_type = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
    if rope_type != "default":
        raise ValueError(f"{config_file}: rope_type {rope_type!r} is not written to GGUF here; only 'default' is.")
    return config


def interleave_rotary_halves(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of a q/k projection (or bias) reordered per head from [first half, second half] to interleaved pairs."""
    head_dim = weight.shape[0] // heads
    return weight.reshape(heads, 2, head_dim // 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _write_hyperparameters(writer, config) -> None:
    import gguf

    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(_head_dim(config))
    writer.add_value_length(_head_dim(config))
    writer.add_rope_dimension_count(_head_dim(config))
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_tokenizer_model("none")  # see the module docstring
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)


def gguf_tensors(model, config) -> dict[str, np.ndarray]:
    """{GGUF tensor name: float32 array} for the model's state dict, q/k rows interleaved for llama.cpp's rotary."""
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    tensors = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ValueError(f"{type(model).__name__}'s tensor {name!r} has no name in GGUF's llama architecture.")
        if ".self_attn.q_proj." in name:
            tensor = interleave_rotary_halves(tensor, config.num_attention_heads)
        elif ".self_attn.k_proj." in name:
            tensor = interleave_rotary_halves(tensor, config.num_key_value_heads)
        tensors[gguf_name] = tensor.detach().to(torch.float32).contiguous().numpy()
    return tensors


def write_gguf_f32(fp32_dir: Path, path: Path) -> None:
    """Write the fp32 Llama checkpoint in ``fp32_dir`` to ``path`` as an F32 GGUF file (see the module docstring)."""
    import gguf

    config = llama_config(fp32_dir)
    tensors = gguf_tensors(load_float32(fp32_dir), config)
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    _write_hyperparameters(writer, config)
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
