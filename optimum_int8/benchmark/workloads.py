"""What is timed: small functions over a loaded model, each with its own input sizes.

A workload turns a model config and its sizes into inputs (seeded, the same for every variant), and runs
one timed call. Add one with ``register_workload``; a preset may override the sizes of any workload.
"""

import dataclasses
import os
import tempfile
from collections.abc import Callable

import torch
from transformers import PretrainedConfig

from ..nn import integer_native


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    # The column title, from the sizes: "greedy 512→32, bs 1".
    title: Callable[[dict], str]
    sizes: dict
    applies: Callable[[PretrainedConfig], bool]
    make_inputs: Callable[[PretrainedConfig, dict, torch.Generator], dict]
    run: Callable[[object, dict, dict], object]
    # Tokens one run processes (prefill) or generates (decode), from the sizes; None: not a token workload. A rate
    # leaves out the time of ``includes``, a workload this one runs first (a decode's prefill), when both were timed.
    tokens: Callable[[dict], int] | None = None
    includes: str | None = None
    # False: run only when named (--workloads), as the first-call workloads, which compile from cold caches.
    by_default: bool = True


WORKLOADS: dict[str, Workload] = {}


def register_workload(workload: Workload) -> Workload:
    WORKLOADS[workload.name] = workload
    return workload


def random_token_ids(config: PretrainedConfig, batch: int, length: int, generator: torch.Generator) -> dict:
    """Token ids above the usual special tokens (0-3), with a full attention mask."""
    input_ids = torch.randint(4, config.vocab_size, (batch, length), generator=generator)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


# Calibration data of the calibrated variants (ours and OpenVINO's static int8): random sequences as long as the
# encoder workload's, from another seed than the timed inputs.
CALIBRATION_SEQUENCES = 16
CALIBRATION_SEED = 1234
_CALIBRATION_DECODER_TOKENS = 16


def calibration_inputs(config: PretrainedConfig) -> list[dict]:
    """``CALIBRATION_SEQUENCES`` single sequences of the encoder workload's default length (capped by the model's
    positions), full attention masks; seq2seq models get a decoder prefix too, so their decoders calibrate."""
    length = min(WORKLOADS["encoder"].sizes["length"], getattr(config, "max_position_embeddings", 512))
    generator = torch.Generator().manual_seed(CALIBRATION_SEED)
    batches = [random_token_ids(config, 1, length, generator) for _ in range(CALIBRATION_SEQUENCES)]
    if _is_seq2seq(config):
        for batch in batches:
            batch["decoder_input_ids"] = batch["input_ids"][:, :_CALIBRATION_DECODER_TOKENS]
    return batches


def _is_seq2seq(config: PretrainedConfig) -> bool:
    return bool(getattr(config, "is_encoder_decoder", False))


def _is_causal_lm(config: PretrainedConfig) -> bool:
    return any(name.endswith("ForCausalLM") for name in getattr(config, "architectures", None) or ())


def is_encoder_only(config: PretrainedConfig) -> bool:
    """Neither seq2seq nor a causal LM: a BERT-style encoder (the ``forward`` workloads)."""
    return not _is_seq2seq(config) and not _is_causal_lm(config)


def _prefill(model, inputs, sizes):
    return model(**inputs)


def _prompt(config, sizes, generator):
    return random_token_ids(config, sizes.get("batch", 1), sizes["prompt_length"], generator)


def _generate(model, inputs, sizes):
    """Exactly ``new_tokens`` tokens for every variant: min = max, so no early end-of-sequence."""
    return model.generate(
        **inputs, num_beams=sizes["beams"], do_sample=False,
        max_new_tokens=sizes["new_tokens"], min_new_tokens=sizes["new_tokens"],
    )


def _encode(model, inputs, sizes):
    return model.get_encoder()(**inputs)


def cold_first_call_workload(workload: Workload, name: str) -> Workload:
    """``workload`` timed as a first call with every compile cache cold (``cold_first_call``): what a model that
    compiles pays once per machine. It runs only when named (``--workloads NAME --repeats 1 --warmup 0``): clearing
    the caches inside a default run would distort the other timings. OpenVINO compiles when loading instead."""
    return dataclasses.replace(
        workload, name=name, title=lambda sizes: f"first call, {workload.title(sizes)}",
        run=lambda model, inputs, sizes: cold_first_call(lambda: workload.run(model, inputs, sizes)), by_default=False,
    )


COMPILE_CACHES = ("TORCHINDUCTOR_CACHE_DIR", integer_native.CACHE_ENV)


def cold_first_call(call: Callable[[], object]) -> object:
    """``call()`` as the first call of a fresh process on a machine that never compiled this model: torch's compiled
    graphs and the loaded native integer kernels are dropped, and inductor's and our kernel caches point at an empty
    directory, so a model that compiles (lazily, under ``torch.compile``, or its native kernels) pays its whole compile
    again. A model that does not compile just runs."""
    from torch._inductor import codecache

    def forget_compiled():
        torch.compiler.reset()
        for cache in (codecache.PyCodeCache, codecache.CppCodeCache):
            cache.cache_clear()
        integer_native.forget()

    forget_compiled()
    previous = {name: os.environ.get(name) for name in COMPILE_CACHES}
    with tempfile.TemporaryDirectory(prefix="optimum-int8-first-call-") as cold_cache:
        os.environ.update(dict.fromkeys(COMPILE_CACHES, cold_cache))
        try:
            return call()
        finally:
            for name, value in previous.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            forget_compiled()


register_workload(Workload(
    "greedy",
    lambda s: f"greedy {s['prompt_length']}→{s['new_tokens']}, bs {s.get('batch', 1)}",
    dict(prompt_length=512, new_tokens=32, beams=1),
    _is_seq2seq, _prompt, _generate,
))
register_workload(Workload(
    "beam",
    lambda s: f"beam {s['beams']}, {s['prompt_length']}→{s['new_tokens']}",
    dict(prompt_length=512, new_tokens=32, beams=4),
    _is_seq2seq, _prompt, _generate,
))
# Causal LMs (docs/llm.md): one prompt through the model, and greedy decoding after it.
register_workload(Workload(
    "prefill",
    lambda s: f"prefill {s['prompt_length']}, bs {s.get('batch', 1)}",
    dict(prompt_length=256),
    _is_causal_lm, _prompt, _prefill,
    tokens=lambda s: s.get("batch", 1) * s["prompt_length"],
))
register_workload(Workload(
    "decode",
    lambda s: f"greedy {s['prompt_length']}→{s['new_tokens']}, bs {s.get('batch', 1)}",
    dict(prompt_length=256, new_tokens=64, beams=1),
    _is_causal_lm, _prompt, _generate,
    tokens=lambda s: s.get("batch", 1) * s["new_tokens"], includes="prefill",
))
register_workload(Workload(
    "encoder",
    lambda s: f"encoder {s['batch']}x{s['length']}",
    dict(batch=4, length=512),
    _is_seq2seq,
    lambda config, s, generator: random_token_ids(config, s["batch"], s["length"], generator),
    _encode,
))
register_workload(cold_first_call_workload(WORKLOADS["encoder"], "first-encoder"))
