"""Time the CPU GEMM kernels optimum-int8 could run its Linear layers on, for BART-large shapes.

    python examples/gemm_kernels.py --rows 1 4 512 2048 --threads 1

For each (rows, in, out) it times, interleaved over several rounds (median per call, ms):

- int8, per-tensor activations: fbgemm's dynamic Linear with 7-bit activations (what optimum-int8 runs,
  ``torch.ops.quantized.linear_dynamic(..., reduce_range=True)``) and with 8-bit ones; oneDNN's dynamic
  Linear (``torch.backends.quantized.engine = "onednn"``);
- int8, per-token activations: symmetric int8 rows quantized with eager torch ops, ``torch._int_mm``, and
  the rescale (the candidate the design notes name), and ``torch._int_mm`` alone;
- bf16: ``F.linear`` on plain bf16 weights, oneDNN on prepacked weights, fp32 GEMM on the upcast weight;
- fp32 ``F.linear``.

With one thread the clock is the process's CPU time, which other jobs on the machine disturb less than
wall time. docs/kernels.md quotes a run of this script.
"""

import argparse
import statistics
import time
import warnings

import torch

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


def _int8_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    scale = weight.abs().amax(dim=1) / 127
    codes = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
    quantized = torch._make_per_channel_quantized_tensor(codes, scale.double(), torch.zeros_like(scale, dtype=torch.long), 0)
    return codes, scale, quantized


def _prepack(quantized: torch.Tensor, bias: torch.Tensor, engine: str):
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        return torch.ops.quantized.linear_prepack(quantized, bias)
    finally:
        torch.backends.quantized.engine = previous


def candidates_for(rows: int, in_features: int, out_features: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, in_features, generator=generator)
    weight = torch.randn(out_features, in_features, generator=generator) * 0.02
    bias = torch.randn(out_features, generator=generator)
    codes, scale, quantized = _int8_weight(weight)
    fbgemm, onednn = _prepack(quantized, bias, "x86"), _prepack(quantized, bias, "onednn")
    codes_t = codes.t()

    def per_token():
        x_scale = x.abs().amax(dim=1, keepdim=True).div_(127).clamp_(min=1e-12)
        x_codes = torch.round(x / x_scale).to(torch.int8)
        return (torch._int_mm(x_codes, codes_t) * x_scale).mul_(scale).add_(bias)

    x_codes = torch.round(x / x.abs().amax(dim=1, keepdim=True).div(127)).to(torch.int8)
    x_bf16, weight_bf16, bias_bf16 = x.bfloat16(), weight.bfloat16(), bias.bfloat16()
    prepacked_bf16 = torch.ops.mkldnn._reorder_linear_weight(weight_bf16, 1)
    candidates = {
        "int8 fbgemm 7-bit (ours)": lambda: torch.ops.quantized.linear_dynamic(x, fbgemm, True),
        "int8 fbgemm 8-bit": lambda: torch.ops.quantized.linear_dynamic(x, fbgemm, False),
        "int8 oneDNN 7-bit": lambda: torch.ops.quantized.linear_dynamic(x, onednn, True),
        "int8 per-token _int_mm": per_token,
        "_int_mm alone": lambda: torch._int_mm(x_codes, codes_t),
        "bf16 F.linear": lambda: torch.nn.functional.linear(x.bfloat16(), weight_bf16, bias_bf16).float(),
        "bf16 oneDNN prepacked": lambda: torch.ops.mkldnn._linear_pointwise(
            x.bfloat16(), prepacked_bf16, bias_bf16, "none", [], "").float(),
        "bf16 as fp32 (upcast)": lambda: torch.nn.functional.linear(
            x_bf16.float(), weight_bf16.float(), bias_bf16.float()).bfloat16().float(),
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
