"""What is compared: each variant builds its checkpoint from the fp32 one and loads it back.

``load`` must be a module-level function: the load-memory measurement calls it by name in a fresh
process. Add one with ``register_variant``; ``int8_variant`` builds int8 variants with fallbacks.
"""

import dataclasses
import hashlib
import importlib.util
import json
from collections.abc import Callable
from pathlib import Path

import torch
import transformers

from ..configuration import Int8Config
from ..quantizer import quantize_model
from ..saving import staged_directory
from ..schemes import SCHEMES
from .workloads import calibration_inputs

WEIGHT_FILE_PATTERNS = ("*.safetensors", "*.bin", "*.onnx", "*.onnx.data", "*.xml", "*.gguf")


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    label: str  # short, for the table and the plot
    description: str
    # (fp32 checkpoint directory, output directory): writes this variant's checkpoint.
    build: Callable[[Path, Path], None] | None
    load: Callable[[Path], object]
    requires: tuple[str, ...] = ()  # importable modules it needs, from an optional extra
    extra: str = ""  # the optimum-int8 extra that installs ``requires``
    workloads: tuple[str, ...] | None = None  # the workloads its model can run; None: every one
    # The directory under the workdir it builds into; None: its name. A variant that only loads another's
    # checkpoint differently (eager decode, a compiled encoder) names that one, so the checkpoint is built once.
    checkpoint_name: str | None = None

    def missing_requirements(self) -> list[str]:
        return [module for module in self.requires if importlib.util.find_spec(module) is None]

    def missing_note(self) -> str:
        """One line: what is missing and how to install it."""
        return (f"skipping variant {self.name}: {', '.join(self.missing_requirements())} not installed "
                f"(pip install 'optimum-int8[{self.extra}]')")

    def runs(self, workload: str) -> bool:
        return self.workloads is None or workload in self.workloads

    def checkpoint(self, fp32_dir: Path, workdir: Path) -> Path:
        """This variant's checkpoint, built once into ``workdir`` (the fp32 variant uses ``fp32_dir``)."""
        if self.build is None:
            return fp32_dir
        target = workdir / (self.checkpoint_name or self.name)
        if not (target / "config.json").is_file():
            with staged_directory(target, carry_over=False) as staging:
                self.build(fp32_dir, staging)
        return target


VARIANTS: dict[str, Variant] = {}


def register_variant(variant: Variant) -> Variant:
    VARIANTS[variant.name] = variant
    return variant


def checkpoint_bytes(directory: Path) -> int:
    """Bytes of weight files (safetensors, pickles, ONNX graphs and their external data, OpenVINO .xml/.bin,
    GGUF)."""
    files = {path for pattern in WEIGHT_FILE_PATTERNS for path in Path(directory).rglob(pattern)}
    return sum(path.stat().st_size for path in files)


def model_class(directory: Path):
    """The transformers class named in ``config.json``'s ``architectures``."""
    config_file = Path(directory) / "config.json"
    architectures = json.loads(config_file.read_text()).get("architectures") or []
    if not architectures or not hasattr(transformers, architectures[0]):
        raise ValueError(
            f"{config_file}: 'architectures' is {architectures!r}; the benchmark needs a transformers model class "
            "there (save the model with save_pretrained)."
        )
    return getattr(transformers, architectures[0])


def load_float32(directory: Path):
    return model_class(directory).from_pretrained(directory, dtype=torch.float32).eval()


def load_bfloat16(directory: Path):
    return model_class(directory).from_pretrained(directory, dtype=torch.bfloat16).eval()


def load_int8(directory: Path):
    """An optimum-int8 checkpoint, through plain transformers (our quantizer is registered on import)."""
    return model_class(directory).from_pretrained(directory).eval()


def load_int8_eager_decode(directory: Path):
    """An optimum-int8 checkpoint without its generation defaults (generation.py): transformers' dynamic KV cache and
    eager decode steps, to show what the static cache and the compiled step bring."""
    model = load_int8(directory)
    model.generation_config.cache_implementation = None
    model.generation_config.compile_config = None
    return model


def load_int8_compiled_encoder(directory: Path):
    """An optimum-int8 checkpoint with its encoder (a seq2seq model's) or whole model under ``torch.compile``, as
    ``openvino-int8`` compiles its encoder: the first call compiles (the warm-up call)."""
    model = load_int8(directory)
    (model.get_encoder() if model.config.is_encoder_decoder else model).compile()
    return model


def quantize_while_loading(directory: Path, config: Int8Config | None = None):
    """An fp32 checkpoint quantized to int8 as its weights stream in."""
    return model_class(directory).from_pretrained(directory, quantization_config=config or Int8Config()).eval()


def _save_bfloat16(fp32_dir: Path, out_dir: Path) -> None:
    load_bfloat16(fp32_dir).save_pretrained(out_dir)


def int8_variant(name: str, label: str, description: str, modules_in_fp32=(), modules_in_bf16=(), **options) -> Variant:
    """Our int8 model with the given fallbacks and ``Int8Config`` options (a scheme, SmoothQuant): quantized while
    loading, or, where the scheme calibrates, loaded in fp32 and calibrated on ``workloads.calibration_inputs``."""

    def build(fp32_dir: Path, out_dir: Path) -> None:
        config = Int8Config(modules_in_fp32=list(modules_in_fp32), modules_in_bf16=list(modules_in_bf16), **options)
        if config.needs_calibration_data:
            model = load_float32(fp32_dir)
            quantize_model(model, config, calibration_data=calibration_inputs(model.config)).save_pretrained(out_dir)
        else:
            quantize_while_loading(fp32_dir, config).save_pretrained(out_dir)

    return Variant(name, label, description, build, load_int8)


def fallback_variants(modules: list[str], source: str) -> list[Variant]:
    """int8 with ``modules`` kept in fp32, and with them in bf16; named after the list's content."""
    digest = hashlib.sha1("\n".join(modules).encode()).hexdigest()[:8]
    what = f"{len(modules)} Linear modules from {source} kept in"
    return [
        int8_variant(f"int8-fallback-fp32-{digest}", f"int8 + {len(modules)} fp32 fallbacks",
                     f"optimum-int8, {what} fp32", modules_in_fp32=modules),
        int8_variant(f"int8-fallback-bf16-{digest}", f"int8 + {len(modules)} bf16 fallbacks",
                     f"optimum-int8, {what} bf16", modules_in_bf16=modules),
    ]


register_variant(Variant("fp32", "torch fp32", "transformers model in float32", None, load_float32))
register_variant(Variant("bf16", "torch bf16", "transformers model loaded with dtype=torch.bfloat16", _save_bfloat16,
                         load_bfloat16))
register_variant(int8_variant("int8", "int8, every Linear", "optimum-int8's default Int8Config(), every Linear module int8"))
for _name, _scheme in SCHEMES.items():
    if _scheme.module_class is not None:
        register_variant(int8_variant(f"int8-{_name.removeprefix('int8_').replace('_', '-')}", _name,
                                      f"optimum-int8 {_name}: {_scheme.summary}", scheme=_name))
register_variant(dataclasses.replace(
    VARIANTS["int8-weight-only"], name="int8-weight-only-eager", label="int8_weight_only, eager decode",
    description="optimum-int8 int8_weight_only with transformers' default generation: dynamic KV cache, eager decode "
                "steps (no compiled step)",
    load=load_int8_eager_decode, checkpoint_name="int8-weight-only",
))
register_variant(int8_variant("int8-static-smoothquant", "int8_static + SmoothQuant 0.5",
                              "optimum-int8 int8_static with SmoothQuant (alpha 0.5), calibrated like openvino-int8",
                              scheme="int8_static", smoothquant_alpha=0.5))
register_variant(dataclasses.replace(
    VARIANTS["int8-static-smoothquant"], name="int8-static-smoothquant-compiled",
    label="int8_static + SmoothQuant 0.5, compiled encoder",
    description="int8-static-smoothquant with its encoder under torch.compile (the whole model for encoder-only ones)",
    load=load_int8_compiled_encoder, checkpoint_name="int8-static-smoothquant",
))
