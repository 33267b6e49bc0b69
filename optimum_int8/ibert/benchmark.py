"""Integer-only (ibert) vs fp32, bf16, dynamic int8 and transformers' I-BERT simulation, in one run.

A RoBERTa-base-shaped sequence classifier (12 layers, hidden 768, 12 heads, FFN 3072, random seeded
weights), batch 8 x 128 tokens by default. Every variant runs the same weights on the same inputs in one
process, so the ratios compare like with like. transformers' ``quant_mode=True`` I-BERT gets the same
weights and its activation ranges from a calibration pass; it is slow, so it is timed over fewer repeats.
"""

import argparse
import copy
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import IBertConfig, IBertForSequenceClassification, RobertaConfig, RobertaForSequenceClassification

from ..configuration import Int8Config
from ..quantizer import quantize_model
from .modules import compile_integer_layers

ROBERTA_BASE_SHAPE = dict(
    vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
    max_position_embeddings=514, type_vocab_size=1, pad_token_id=1, num_labels=2,
)


@dataclasses.dataclass
class Measurement:
    variant: str
    seconds: float
    repeats: int
    setup_seconds: float = 0.0
    note: str = ""


def _time(model, inputs, repeats: int, warmup: int) -> float:
    with torch.inference_mode():
        for _ in range(warmup):
            model(**inputs)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(**inputs)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _ibert_simulation(shape: dict, fp32: RobertaForSequenceClassification, calibration: dict) -> IBertForSequenceClassification:
    """transformers' I-BERT in ``quant_mode=True`` with ``fp32``'s weights, its ranges set by a calibration pass."""
    config = IBertConfig(**shape, quant_mode=True, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    simulation = IBertForSequenceClassification(config)
    weights = {name.replace("roberta.", "ibert.", 1): tensor for name, tensor in fp32.state_dict().items()}
    result = simulation.load_state_dict(weights, strict=False)
    if result.unexpected_keys:
        raise RuntimeError(f"RoBERTa weights that I-BERT has no place for: {result.unexpected_keys[:4]}")
    simulation.train()  # QuantAct modules record their ranges in training mode only
    with torch.no_grad():
        simulation(**calibration)
    return simulation.eval()


def run(
    num_hidden_layers: int = 12, batch_size: int = 8, sequence_length: int = 128, repeats: int = 5,
    simulation_repeats: int = 1, include_simulation: bool = True, seed: int = 0,
) -> list[Measurement]:
    """Time every variant on one RoBERTa-base-shaped model; the first row is the fp32 baseline."""
    torch.manual_seed(seed)
    shape = {**ROBERTA_BASE_SHAPE, "num_hidden_layers": num_hidden_layers}
    config = RobertaConfig(**shape)
    fp32 = RobertaForSequenceClassification(config).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    input_ids = torch.randint(3, config.vocab_size, (batch_size, sequence_length), generator=generator)
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    calibration = {"input_ids": input_ids[:2], "attention_mask": inputs["attention_mask"][:2]}
    results = []
    steps = tqdm(total=6 + include_simulation, desc="Benchmarking", unit="variant", leave=False)

    def measure(variant, model, setup_seconds=0.0, note="", count=repeats, warmup=1):
        results.append(Measurement(variant, _time(model, inputs, count, warmup), count, setup_seconds, note))
        steps.update()

    measure("fp32", fp32)
    measure("bf16", copy.deepcopy(fp32).to(torch.bfloat16))
    measure("int8_dynamic", quantize_model(copy.deepcopy(fp32), Int8Config()))
    start = time.perf_counter()
    integer = quantize_model(copy.deepcopy(fp32), Int8Config(scheme="ibert"), calibration_data=[calibration])
    measure("ibert eager", integer, time.perf_counter() - start, "quantize + calibrate")
    with torch.inference_mode():
        eager_logits = integer(**inputs).logits
    compiled = compile_integer_layers(integer)
    start = time.perf_counter()
    with torch.inference_mode():
        compiled_logits = compiled(**inputs).logits
    exact = torch.equal(compiled_logits, eager_logits)
    measure("ibert compiled", compiled, time.perf_counter() - start,
            f"first call compiles; logits {'bit-identical to' if exact else 'DIFFER from'} eager")
    fp32_compiled = torch.compile(copy.deepcopy(fp32))
    start = time.perf_counter()
    with torch.inference_mode():
        fp32_compiled(**inputs)
    measure("fp32 compiled", fp32_compiled, time.perf_counter() - start, "torch.compile of the fp32 model, for reference")
    if include_simulation:
        measure("transformers I-BERT quant_mode=True", _ibert_simulation(shape, fp32, calibration),
                note="float simulation of integer arithmetic", count=simulation_repeats, warmup=0)
    steps.close()
    return results


def format_table(results: list[Measurement], workload: str) -> str:
    baseline = results[0].seconds
    lines = [f"ibert benchmark: RoBERTa-base-shaped classifier, {workload}, torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads", "",
             f"{'variant':<38} {'seconds':>9} {'vs fp32':>8} {'repeats':>8}  note"]
    for row in results:
        lines.append(f"{row.variant:<38} {row.seconds:>9.3f} {baseline / row.seconds:>7.2f}x {row.repeats:>8}  {row.note}"
                     + (f" (setup {row.setup_seconds:.1f} s)" if row.setup_seconds else ""))
    lines.append("")
    lines.append("vs fp32 > 1 means faster than fp32 (fp32 seconds / variant seconds); medians over the repeats.")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--sequence-length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--simulation-repeats", type=int, default=1)
    parser.add_argument("--skip-simulation", action="store_true", help="leave out transformers' slow quant_mode=True run")
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    args = parser.parse_args(argv)
    results = run(args.layers, args.batch_size, args.sequence_length, args.repeats, args.simulation_repeats,
                  not args.skip_simulation)
    workload = f"{args.layers} layers, batch {args.batch_size} x {args.sequence_length} tokens"
    print(format_table(results, workload))
    if args.json:
        args.json.write_text(json.dumps({"workload": workload, "results": [dataclasses.asdict(r) for r in results]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
