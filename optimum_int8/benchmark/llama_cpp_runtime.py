"""llama.cpp on the same weights, the engine users pick for causal LMs on CPUs, through ``llama-cpp-python``.

- ``llama-cpp-f32``: the fp32 checkpoint written as an F32 GGUF file (``gguf_export.write_gguf_f32``).
- ``llama-cpp-q8-0``: that file quantized to Q8_0 by llama.cpp's own quantizer (``llama_model_quantize`` with
  its default parameters), so it is the file ``llama-quantize model.gguf out.gguf Q8_0`` gives users.

Both load with llama.cpp's defaults: memory-mapped weights, its CPU backend, flash attention and an f16 KV cache
(attention in 16-bit floats: ~1e-3 relative error on the logits, even in F32), a context as long as the model's
positions, and as many threads as torch uses, for single-token steps and prompts alike, with its weights repacked
for the CPU's vector units. One exception: a llama.cpp built with AMX (pip's default native build on an AMX CPU)
repacks quantized weights for its AMX matmul, which segfaults on the first evaluation (llama.cpp issue 20824; seen
here with llama-cpp-python 0.3.36 on Q8_0 and Q4_1 files). With such a build the weights keep llama.cpp's plain
layout, as its ``--no-repack`` option keeps them; a build without AMX (``CMAKE_ARGS="-DGGML_NATIVE=OFF
-DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON ..."``, docs/benchmarks.md) keeps the repacking and is the faster peer there.
The benchmark reports which (``kernel_description``).

They run the causal-LM workloads only, batch 1: ``prefill`` evaluates the prompt from an empty KV cache and returns
the last position's logits (what generation needs; transformers computes every position's), ``decode`` is greedy
decoding of exactly ``new_tokens`` tokens, the argmax of the logits as transformers' greedy search takes it,
end-of-sequence ignored.
"""

import logging
import shutil
import weakref
from pathlib import Path

import numpy as np
import torch
from transformers.modeling_outputs import CausalLMOutput

from .gguf_export import write_gguf_f32
from .variants import Variant, register_variant

GGUF_FILE = "model.gguf"
_F32_STAGING_FILE = "model-f32.gguf"


def _silence_llama_cpp() -> None:
    """llama.cpp's log lines off (a line per tensor while quantizing), as Llama(verbose=False) means to:
    llama-cpp-python's level table predates ggml's DEBUG level, so llama.cpp's warnings reach its logger as errors."""
    logging.getLogger("llama-cpp-python").setLevel(logging.CRITICAL)


def _copy_config(fp32_dir: Path, out_dir: Path) -> None:
    shutil.copy2(Path(fp32_dir) / "config.json", Path(out_dir) / "config.json")


def build_llama_cpp_f32(fp32_dir: Path, out_dir: Path) -> None:
    write_gguf_f32(fp32_dir, Path(out_dir) / GGUF_FILE)
    _copy_config(fp32_dir, out_dir)


def quantize_q8_0(source: Path, target: Path) -> None:
    """``source`` (a GGUF file) quantized to Q8_0 into ``target`` by llama.cpp, as ``llama-quantize`` does."""
    import llama_cpp

    _silence_llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    params.nthread = torch.get_num_threads()
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params)
    if status != 0:
        raise RuntimeError(f"llama.cpp could not quantize {source} to Q8_0 (llama_model_quantize returned {status}).")


def build_llama_cpp_q8_0(fp32_dir: Path, out_dir: Path) -> None:
    f32_file = Path(out_dir) / _F32_STAGING_FILE
    write_gguf_f32(fp32_dir, f32_file)
    quantize_q8_0(f32_file, Path(out_dir) / GGUF_FILE)
    f32_file.unlink()
    _copy_config(fp32_dir, out_dir)


def _free(llama_cpp, context, model) -> None:
    llama_cpp.llama_free(context)
    llama_cpp.llama_model_free(model)


class LlamaCppCausalLM:
    """A GGUF model in llama.cpp with what the causal-LM workloads call: ``__call__`` and greedy ``generate``."""

    def __init__(self, path: Path, threads: int | None = None, context_options: dict | None = None):
        """``context_options``: ``llama_context_params`` fields set over llama.cpp's defaults, e.g. ``flash_attn_type``
        0 and ``type_k`` / ``type_v`` ``GGML_TYPE_F32`` for attention in float32."""
        import llama_cpp

        _silence_llama_cpp()
        self._llama_cpp = llama_cpp
        model_params = llama_cpp.llama_model_default_params()
        amx_build = b"AMX_INT8 = 1" in llama_cpp.llama_print_system_info()
        model_params.use_extra_bufts = not amx_build  # see the module docstring
        self.kernel_description = (
            "llama.cpp, plain weight layout (this build's AMX repacking crashes)" if amx_build
            else "llama.cpp, weights repacked for this CPU"
        )
        model = llama_cpp.llama_model_load_from_file(str(path).encode(), model_params)
        if not model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        self.context_length = llama_cpp.llama_model_n_ctx_train(model)
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = params.n_batch = self.context_length  # a whole prompt in one llama_decode call
        params.n_threads = params.n_threads_batch = threads or torch.get_num_threads()
        for field, value in (context_options or {}).items():
            setattr(params, field, value)
        context = llama_cpp.llama_init_from_model(model, params)
        if not context:
            llama_cpp.llama_model_free(model)
            raise RuntimeError(f"llama.cpp could not create a context for {path}")
        self.context = context  # llama.cpp's llama_context
        weakref.finalize(self, _free, llama_cpp, context, model)
        self.vocab_size = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))

    def _prompt(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, new_tokens: int = 0) -> list[int]:
        if input_ids.dim() != 2 or input_ids.shape[0] != 1:
            raise ValueError(f"llama.cpp variants run batch 1 only; got input_ids of shape {tuple(input_ids.shape)}")
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("llama.cpp variants take unpadded prompts only; the attention mask has zeros")
        if input_ids.shape[1] + new_tokens > self.context_length:
            raise ValueError(f"{input_ids.shape[1]} prompt tokens + {new_tokens} new ones exceed the model's "
                             f"{self.context_length} positions")
        return input_ids[0].tolist()

    def _evaluate(self, tokens: list[int]) -> np.ndarray:
        """Append ``tokens`` to the KV cache; the logits of the last one (a view into llama.cpp's buffer)."""
        llama_cpp = self._llama_cpp
        array = (llama_cpp.llama_token * len(tokens))(*tokens)
        status = llama_cpp.llama_decode(self.context, llama_cpp.llama_batch_get_one(array, len(tokens)))
        if status != 0:
            raise RuntimeError(f"llama_decode returned {status} on {len(tokens)} tokens")
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.context, -1), shape=(self.vocab_size,))

    def _prefill(self, tokens: list[int]) -> np.ndarray:
        self._llama_cpp.llama_memory_clear(self._llama_cpp.llama_get_memory(self.context), True)
        return self._evaluate(tokens)

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> CausalLMOutput:
        """The prompt from an empty KV cache; ``logits`` of the last position only, shape (1, 1, vocab)."""
        logits = self._prefill(self._prompt(input_ids, attention_mask))
        return CausalLMOutput(logits=torch.from_numpy(logits.copy()).view(1, 1, -1))

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, num_beams: int = 1,
                 do_sample: bool = False, max_new_tokens: int = 20, min_new_tokens: int | None = None) -> torch.Tensor:
        """Greedy decoding of exactly ``max_new_tokens`` tokens: the prompt then the new ids, like transformers'."""
        if num_beams != 1 or do_sample:
            raise ValueError(
                f"llama.cpp variants decode greedily only; got num_beams={num_beams}, do_sample={do_sample}"
            )
        if min_new_tokens != max_new_tokens:
            raise ValueError("llama.cpp variants generate exactly max_new_tokens tokens, ignoring end-of-sequence; "
                             f"pass min_new_tokens={max_new_tokens} (got {min_new_tokens})")
        logits = self._prefill(self._prompt(input_ids, attention_mask, max_new_tokens))
        new_ids = []
        for step in range(max_new_tokens):
            new_ids.append(int(logits.argmax()))
            if step + 1 < max_new_tokens:
                logits = self._evaluate(new_ids[-1:])
        return torch.cat([input_ids, torch.tensor([new_ids], dtype=input_ids.dtype)], dim=1)


def load_llama_cpp(directory: Path) -> LlamaCppCausalLM:
    return LlamaCppCausalLM(Path(directory) / GGUF_FILE)


register_variant(Variant(
    "llama-cpp-q8-0", "llama.cpp Q8_0",
    "llama.cpp (llama-cpp-python) on the F32 GGUF export quantized to Q8_0 by llama.cpp's own quantizer; a llama.cpp "
    "built with AMX runs it without weight repacking, which crashes there",
    build_llama_cpp_q8_0, load_llama_cpp, requires=("llama_cpp", "gguf"), extra="llama-cpp",
    workloads=("prefill", "decode"),
))
register_variant(Variant(
    "llama-cpp-f32", "llama.cpp F32",
    "llama.cpp (llama-cpp-python) on the fp32 weights written as an F32 GGUF file",
    build_llama_cpp_f32, load_llama_cpp, requires=("llama_cpp", "gguf"), extra="llama-cpp",
    workloads=("prefill", "decode"),
))
