"""The fast generation path of int8 causal LMs: a static KV cache and a compiled decode step, inside transformers'
own ``generate`` (so ``pipeline("text-generation")`` and every generation option keep working).

A decode step of a small LM multiplies one token by every weight; in eager PyTorch the Python and dispatch
overhead of a few thousand small ops and the KV cache growing by concatenation cost as much as the int8 GEMMs
(docs/llm.md has the profile). transformers already compiles the decode step when the cache is static and the
quantizer says the model compiles, but only on accelerators unless a ``CompileConfig`` asks for every device. So
when a causal LM whose int8 layers all trace without graph breaks (``Scheme.compiles``) is loaded or quantized:

- ``generation_config.cache_implementation = "static"`` unless another cache is set: the KV cache is allocated once per
  ``generate`` call and written in place;
- ``generation_config.compile_config``: inductor, ``dynamic=None`` (a second prompt length compiles one dynamic
  graph instead of one graph per length). Where inductor fails (no C++ compiler, an unsupported torch), the graph
  runs eagerly and one ``DecodeCompileWarning`` says why.

What is left of a compiled step besides its kernels is Python: the wrapper that launches them and dynamo's guards,
checked before every step. So inductor writes the wrapper in C++ (``cpp_wrapper``), and the guards skip the
packed int8 weights (``PACKED_WEIGHT_GUARDS``): two of every int8 Linear's tensors, most of a model's guards.

Both are runtime settings, never saved (``save_pretrained`` writes the generation config without them): a static
cache without the compiled step decodes slower than transformers' default cache. Prefill stays eager
(transformers compiles decode steps only). The first ``generate`` call of a process pays the
compile; ``generate(..., disable_compile=True)``, ``OPTIMUM_INT8_COMPILE=0`` (read when the model is configured)
or a cache or compile config of the user's own keep the eager path.
"""

import contextlib
import warnings

import torch
from transformers.generation.configuration_utils import CompileConfig

from .compilation import COMPILE_ENV, compile_switched_off


# inductor_or_eager's name among torch.compile's backends: a generation config holds a backend's name, not the
# function, since transformers hashes and saves the config as JSON.
BACKEND = "optimum_int8_inductor_or_eager"


class DecodeCompileWarning(UserWarning):
    """torch.compile failed on this machine: decode steps run eagerly (the same model, slower)."""


class _State:
    failure: str | None = None  # why inductor failed in this process; None while it works (or was not tried)


_STATE = _State()


# The C++ wrapper, built apart from the kernels at -O2: one build of wrapper and kernels together at -O3 (inductor's
# default) took 335 s on first use against 86 s, for the same decode speed within noise (SmolLM2, 2 threads).
_CPP_WRAPPER = {"cpp_wrapper": True, "cpp_wrapper_build_separate": True, "aot_inductor.compile_wrapper_opt_level": "O2"}


def inductor_or_eager(graph_module, example_inputs):
    """A ``torch.compile`` backend: inductor, or the traced graph run eagerly once inductor has failed here."""
    if _STATE.failure is None:
        try:
            from torch._inductor.compile_fx import compile_fx

            return compile_fx(graph_module, example_inputs, config_patches=_CPP_WRAPPER)
        except Exception as error:  # noqa: BLE001: any compiler failure falls back to the graph itself
            _fall_back(error)
    return graph_module.forward


def _fall_back(error: Exception) -> None:
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    _STATE.failure = f"{type(error).__name__}: {message}"[:300]
    warnings.warn(
        f"torch.compile does not work here ({_STATE.failure}); int8 decode steps run eagerly from now on: the same "
        f"model, slower. A C++ compiler (g++) and a torch release that supports this Python make them fast; set "
        f"{COMPILE_ENV}=0 to skip the attempt.",
        DecodeCompileWarning,
        stacklevel=2,
    )


class _PackedWeightGuards(str):
    """A ``torch.compile`` guard filter that drops the tensor checks on packed int8 weights.

    A packed weight's dtype, shape and device never change: ``pack()`` builds it from the module's fixed checkpoint
    layout, and ``model.to(...)`` does not touch it (``nn.packed_linear``). So checking them before every decode step
    protects nothing and costs most of the guards' time. Every other guard stays, float parameters' included. The
    filter is a string (its own description) so that the generation config holding it still prints, compares and
    hashes as JSON, as transformers does with it.
    """

    def __call__(self, entries) -> list[bool]:
        return [not (entry.guard_type == "TENSOR_MATCH" and _PACKED_SOURCE in entry.name) for entry in entries]


_PACKED_SOURCE = "._packed."
PACKED_WEIGHT_GUARDS = _PackedWeightGuards("optimum_int8: no tensor guards on packed int8 weights")


def decode_compile_config() -> CompileConfig:
    """What the decode step compiles with, on every device (transformers' default compiles on accelerators only)."""
    if BACKEND not in torch._dynamo.list_backends(exclude_tags=()):
        torch._dynamo.register_backend(inductor_or_eager, name=BACKEND)
    config = CompileConfig(fullgraph=False, dynamic=None, backend=BACKEND, mode=None,
                           options={"guard_filter_fn": PACKED_WEIGHT_GUARDS})
    config._compile_all_devices = True
    return config


def is_causal_lm(model) -> bool:
    return model.can_generate() and not getattr(model.config, "is_encoder_decoder", False)


_CONFIGURED = "_optimum_int8_fast_decode"


def configure_fast_decode(model) -> bool:
    """Give ``model`` (a causal LM whose int8 layers compile) a static cache and a compiled decode step, unless its
    generation config names another cache or a compile config of its own (a static cache it names gets the
    compiled step too). Returns whether it was configured."""
    if compile_switched_off() or not is_causal_lm(model):
        return False
    generation_config = model.generation_config
    if generation_config.compile_config is not None or generation_config.cache_implementation not in (None, "static"):
        return False
    generation_config.cache_implementation = "static"
    generation_config.compile_config = decode_compile_config()
    setattr(model, _CONFIGURED, True)
    return True


@contextlib.contextmanager
def saved_without_fast_decode(model):
    """Inside this block ``model``'s generation config lacks the settings ``configure_fast_decode`` added, so that a
    save writes the user's generation config, not this process's runtime choice."""
    generation_config = getattr(model, "generation_config", None)
    if not getattr(model, _CONFIGURED, False) or generation_config is None:
        yield
        return
    added = {"cache_implementation": generation_config.cache_implementation,
             "compile_config": generation_config.compile_config}
    for name in added:
        setattr(generation_config, name, None)
    try:
        yield
    finally:
        for name, value in added.items():
            setattr(generation_config, name, value)
