"""Time optimum-int8's int8 GEMM backends against torch's bf16 and fp32 GEMMs, for BART-large Linear shapes.

    python examples/gemm_kernels.py --rows 1 4 16 32 64 512 2048 --threads 2

For each (rows, in, out) it times, interleaved over several rounds (median per call, ms), the code paths the
int8 layers run (``optimum_int8.nn.kernels``), activation quantization included:

- each int8 backend (fbgemm, oneDNN) with fp32 activations in and out, and with bf16 in and out (what an
  int8 model computing in bf16 runs), 8-bit activations; fbgemm with 7-bit ones (torch.ao's x86 default);
- bf16: ``F.linear`` on bf16 weights (what a ``model.to(torch.bfloat16)`` runs) and oneDNN on prepacked ones;
- fp32 ``F.linear``.

The row count where oneDNN overtakes fbgemm is the ``short_below`` threshold of the dispatch table
(``optimum_int8/nn/kernels/dispatch.py``). With one thread the clock is the process's CPU time, which other
jobs on the machine disturb less than wall time. docs/kernels.md quotes runs of this script.
"""

import argparse
import functools
import statistics
import time
import warnings

import torch

from optimum_int8.nn import kernels

SHAPES = ((1024, 1024), (1024, 4096), (4096, 1024))  # (in, out): attention projections, fc1, fc2


def _per_call_ms(function, calls: int, clock) -> float:
    start = clock()
    for _ in range(calls):
        function()
    return (clock() - start) / calls * 1e3


def interleaved_medians(candidates: dict, rounds: int, clock, budget_ms: float = 40.0) -> dict:
    for function in candidates.values():
        function()
        function()
    calls = {name: max(1, int(budget_ms / max(_per_call_ms(f, 1, clock), 1e-3))) for name, f in candidates.items()}
    samples = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, function in candidates.items():
            samples[name].append(_per_call_ms(function, calls[name], clock))
    return {name: statistics.median(values) for name, values in samples.items()}


def candidates_for(rows: int, in_features: int, out_features: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, in_features, generator=generator)
    weight = torch.randn(out_features, in_features, generator=generator) * 0.02
    bias = torch.randn(out_features, generator=generator)
    scale = weight.abs().amax(dim=1) / 127
    codes = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
    x_bf16, weight_bf16, bias_bf16 = x.bfloat16(), weight.bfloat16(), bias.bfloat16()
    candidates = {}
    for name, backend in kernels.BACKENDS.items():
        if backend.unavailable_reason(kernels.capabilities.detect()) is not None:
            continue
        packed = backend.pack(codes, scale, bias)
        candidates[f"int8 {name}"] = functools.partial(backend.linear, x, packed, False, torch.float32)
        candidates[f"int8 {name} bf16"] = functools.partial(backend.linear, x_bf16, packed, False, torch.bfloat16)
        if name == "fbgemm":
            candidates["int8 fbgemm 7-bit"] = functools.partial(backend.linear, x, packed, True, torch.float32)
    prepacked_bf16 = torch.ops.mkldnn._reorder_linear_weight(weight_bf16, 1)
    candidates |= {
        "bf16 F.linear": lambda: torch.nn.functional.linear(x_bf16, weight_bf16, bias_bf16),
        "bf16 oneDNN prepacked": lambda: torch.ops.mkldnn._linear_pointwise(x_bf16, prepacked_bf16, bias_bf16, "none", [], ""),
        "fp32 F.linear": lambda: torch.nn.functional.linear(x, weight, bias),
    }
    return candidates


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 4, 512, 2048])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.threads == 1 else time.perf_counter
    results = {}
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        for rows in args.rows:
            for in_features, out_features in SHAPES:
                medians = interleaved_medians(candidates_for(rows, in_features, out_features), args.rounds, clock)
                results[(rows, in_features, out_features)] = medians
                if len(results) == 1:
                    print("| rows x in -> out | " + " | ".join(medians) + " |")
                    print("|" + "---|" * (len(medians) + 1))
                print(f"| {rows} x {in_features} -> {out_features} | " + " | ".join(f"{v:.3f}" for v in medians.values()) + " |")
    return results


if __name__ == "__main__":
    main()
