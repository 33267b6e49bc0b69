"""Run a benchmark: build each variant's checkpoint, measure loading, then time the workloads interleaved."""

import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import shutil
import time
import warnings
from pathlib import Path

import torch
import transformers
from tqdm.auto import tqdm
from transformers import AutoConfig

from ..nn import kernels, runtime
from .load_memory import measure_in_fresh_process
from .presets import PRESETS
from .profiling import profile_run
from .results import BenchmarkResult, VariantResult
from .variants import VARIANTS, Variant, checkpoint_bytes, fallback_variants
from .workloads import WORKLOADS

logger = logging.getLogger(__name__)

DEFAULT_VARIANTS = ("fp32", "bf16", "int8", "ort-int8", "openvino-int8", "openvino-bf16")


@dataclasses.dataclass
class BenchmarkSettings:
    """What to run. ``model`` is a preset name (``PRESETS``) or an fp32 transformers model directory."""

    model: str = "bart-large-cnn"
    workdir: Path = Path("benchmark-workdir")
    # Variant names (VARIANTS); None: fp32, bf16, int8, ORT int8 and OpenVINO int8/bf16 where their extras
    # are installed, and the two fallback variants when ``fallbacks`` is given.
    variants: list[str] | None = None
    workloads: list[str] | None = None  # None: every registered workload that applies to the model, by default
    fallbacks: list[str] = dataclasses.field(default_factory=list)  # Linear module names kept in float
    fallbacks_source: str = "a given list"
    repeats: int = 5
    warmup: int = 1
    threads: int | None = None  # torch (and ONNX Runtime, OpenVINO) threads; None: torch's default
    seed: int = 0
    measure_load: bool = True
    sizes: dict = dataclasses.field(default_factory=dict)  # {"greedy": {"new_tokens": 64}, ...}
    rebuild: bool = False  # rebuild cached checkpoints in workdir
    profile: bool = False  # after timing, profile one run of each workload and variant (where the time goes)


def read_module_list(path: Path) -> list[str]:
    """Module names, one per line; blank lines and ``#`` comments are skipped."""
    names = [line.split("#", 1)[0].strip() for line in Path(path).read_text().splitlines()]
    names = [name for name in names if name]
    if not names:
        raise ValueError(f"{path} lists no module names (expected one Linear module name per line).")
    return names


def _source_checkpoint(settings: BenchmarkSettings) -> tuple[Path, Path, str]:
    """(fp32 checkpoint, directory for the variants' checkpoints, description of the model)."""
    workdir = Path(settings.workdir)
    preset = PRESETS.get(settings.model)
    if preset is not None:
        base = workdir / preset.checkpoint_name(settings.seed)
        fp32_dir = base / "fp32"
        if settings.rebuild and base.exists():
            shutil.rmtree(base)
        if not (fp32_dir / "config.json").is_file():
            from ..saving import staged_directory

            with staged_directory(fp32_dir, carry_over=False) as staging:
                preset.save(staging, settings.seed)
        return fp32_dir, base, f"preset {preset.name}: {preset.description}, seed {settings.seed}"
    fp32_dir = Path(settings.model).expanduser().resolve()
    config_file = fp32_dir / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{settings.model!r} is neither a preset ({sorted(PRESETS)}) nor a model directory with a config.json."
        )
    if "quantization_config" in json.loads(config_file.read_text()):
        raise ValueError(f"{config_file} has a quantization_config; the benchmark starts from an fp32 checkpoint.")
    base = workdir / f"{fp32_dir.name}-{hashlib.sha1(str(fp32_dir).encode()).hexdigest()[:8]}"
    if settings.rebuild and base.exists():
        shutil.rmtree(base)
    return fp32_dir, base, f"model directory {fp32_dir}"


def _select_variants(settings: BenchmarkSettings) -> list[Variant]:
    """The chosen variants, less those whose optional extra is not installed (a one-line note each)."""
    extra = fallback_variants(settings.fallbacks, settings.fallbacks_source) if settings.fallbacks else []
    known = {**VARIANTS, **{variant.name: variant for variant in extra}}
    if settings.variants is None:
        chosen = [VARIANTS[name] for name in DEFAULT_VARIANTS if name in VARIANTS]
        chosen = chosen[:3] + extra + chosen[3:]
    else:
        unknown = [name for name in settings.variants if name not in known]
        if unknown:
            raise ValueError(f"unknown variant(s) {unknown}; known: {sorted(known)}")
        chosen = [known[name] for name in settings.variants]
    for variant in [v for v in chosen if v.missing_requirements()]:
        logger.warning(variant.missing_note())
    installed = [v for v in chosen if not v.missing_requirements()]
    if not installed:
        raise ImportError(f"none of the chosen variants {[v.name for v in chosen]} is installed")
    return installed


def _drop_variants_without_workloads(variants: list[Variant], workloads) -> list[Variant]:
    """Variants that run none of ``workloads`` (e.g. OpenVINO's encoder-only ones on ``greedy``) are left out."""
    kept = [v for v in variants if any(v.runs(name) for name in workloads)]
    for variant in [v for v in variants if v not in kept]:
        logger.warning(f"skipping variant {variant.name}: it runs {list(variant.workloads)} only, none of {list(workloads)}")
    if not kept:
        raise ValueError(f"none of the chosen variants runs any of the workloads {list(workloads)}")
    return kept


def _select_workloads(settings: BenchmarkSettings, config, preset_sizes: dict) -> dict[str, dict]:
    """{workload name: its sizes} for the workloads to run."""
    names = settings.workloads or [name for name, w in WORKLOADS.items() if w.by_default and w.applies(config)]
    unknown = [name for name in names if name not in WORKLOADS]
    if unknown:
        raise ValueError(f"unknown workload(s) {unknown}; known: {sorted(WORKLOADS)}")
    if not names:
        raise ValueError(f"no registered workload applies to {type(config).__name__} (known: {sorted(WORKLOADS)})")
    not_applicable = [name for name in names if not WORKLOADS[name].applies(config)]
    if not_applicable:
        raise ValueError(f"workload(s) {not_applicable} do not apply to a {config.model_type} model")
    return {
        name: {**WORKLOADS[name].sizes, **preset_sizes.get(name, {}), **settings.sizes.get(name, {})} for name in names
    }


def _read_first(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.readline().strip()
    except OSError:
        return None


def machine_state() -> dict:
    """What else the CPU was doing: load averages and Linux's CPU pressure (share of time tasks waited)."""
    return {"loadavg": list(os.getloadavg()), "cpu_pressure": _read_first("/proc/pressure/cpu")}


def machine_info() -> dict:
    model_name = platform.processor()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            lines = cpuinfo.read().splitlines()
        model_name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), model_name)
    except OSError:
        pass
    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    try:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    # Read from the installed metadata: importing nncf takes seconds.
    for distribution in ("openvino", "nncf", "llama-cpp-python", "gguf"):
        try:
            versions[distribution] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            pass
    return {
        "cpu": model_name,
        "cpu_count": os.cpu_count(),
        "isa": kernels.capabilities.detect().flags(),
        # What a run on another CPU is emulated with: our kernel choices made for other flags, oneDNN capped below
        # the CPU's own instructions (ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI: no AMX, no native bf16).
        "isa_choices": kernels.capabilities.current().flags(),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "kernel_override": os.environ.get(kernels.KERNEL_ENV),
        "torch_threads": torch.get_num_threads(),
        "versions": versions,
        "platform": platform.platform(),
    }


def _time_once(workload, model, inputs, sizes) -> float:
    start = time.perf_counter()
    workload.run(model, inputs, sizes)
    return time.perf_counter() - start


def run_benchmark(settings: BenchmarkSettings) -> BenchmarkResult:
    """Build, load and time every variant on every workload; ratios come from this one run."""
    if settings.repeats < 1 or settings.warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {settings.repeats} and {settings.warmup}")
    if settings.threads:
        torch.set_num_threads(settings.threads)
    fp32_dir, base, model_description = _source_checkpoint(settings)
    variants = _select_variants(settings)
    config = AutoConfig.from_pretrained(fp32_dir)
    preset = PRESETS.get(settings.model)
    workload_sizes = _select_workloads(settings, config, preset.sizes if preset else {})
    variants = _drop_variants_without_workloads(variants, workload_sizes)
    state_before = machine_state()

    checkpoints = {}
    for variant in tqdm(variants, desc="Building checkpoints", unit="variant"):
        checkpoints[variant.name] = variant.checkpoint(fp32_dir, base)
    results = [
        VariantResult(v.name, v.label, v.description, checkpoint_bytes(checkpoints[v.name]),
                      skipped=[name for name in workload_sizes if not v.runs(name)])
        for v in variants
    ]
    if settings.measure_load:
        for variant, result in zip(tqdm(variants, desc="Measuring load memory", unit="variant"), results):
            measurement = measure_in_fresh_process(
                variant.load, checkpoints[variant.name], torch.get_num_threads(), variant.requires
            )
            result.load_seconds, result.load_peak_bytes = measurement.seconds, measurement.peak_above_baseline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models = {v.name: v.load(checkpoints[v.name]) for v in tqdm(variants, desc="Loading", unit="variant")}
    for result in results:
        model = models[result.name]
        result.kernel = runtime.describe(model) if isinstance(model, torch.nn.Module) else getattr(model, "kernel_description", "")
    generator = torch.Generator().manual_seed(settings.seed)
    inputs = {name: WORKLOADS[name].make_inputs(config, sizes, generator) for name, sizes in workload_sizes.items()}

    total = (settings.warmup + settings.repeats) * sum(name not in r.skipped for name in workload_sizes for r in results)
    with torch.inference_mode(), tqdm(total=total, desc="Timing", unit="run") as progress:
        for repeat in range(settings.warmup + settings.repeats):
            for name, sizes in workload_sizes.items():
                for result in [r for r in results if name not in r.skipped]:
                    seconds = _time_once(WORKLOADS[name], models[result.name], inputs[name], sizes)
                    if repeat >= settings.warmup:
                        result.seconds.setdefault(name, []).append(seconds)
                    progress.set_postfix_str(f"{name} {result.name} {seconds:.2f}s")
                    progress.update()

    if settings.profile:
        with torch.inference_mode():
            for name, sizes in tqdm(workload_sizes.items(), desc="Profiling", unit="workload"):
                for result in [r for r in results if name not in r.skipped]:
                    result.profile[name] = profile_run(WORKLOADS[name], models[result.name], inputs[name], sizes)

    machine = machine_info() | {"before": state_before, "after": machine_state()}
    recorded = dataclasses.asdict(settings) | {"workdir": str(settings.workdir), "sizes": workload_sizes,
                                              "model_description": model_description}
    return BenchmarkResult(
        model=model_description,
        workloads={name: WORKLOADS[name].title(sizes) for name, sizes in workload_sizes.items()},
        variants=results, settings=recorded, machine=machine,
    )
