"""The quantization config stored in config.json: scheme, requested fp32 modules, fallback manifest."""

import dataclasses
import importlib.metadata
from typing import Any

from transformers.utils.quantization_config import QuantizationConfigMixin

from .nn.kernels import KERNEL_CHOICES
from .nn.runtime import COMPUTE_DTYPE_CHOICES
from .schemes import CALIBRATION_NONE, CALIBRATION_REQUIRED, SCHEMES, get_scheme

QUANT_METHOD = "optimum_int8"
# 2 added the runtime choices (kernel, compute_dtype, reduce_range); the tensors are those of version 1.
# 3 added the per-token, static and weight-only schemes: per-module schemes and the calibration record in the
# manifest, and the static and smoothing tensors (input_scale, input_zero_point, smooth_scale).
# 4 added calibrated output qparams (output_scale, output_zero_point) of int8_static modules, listed in the manifest's
# output_qparams_modules: legacy INC static checkpoints converted without changing their outputs.
FORMAT_VERSION = 4
READABLE_FORMAT_VERSIONS = (1, 2, 3, 4)
SCHEME_INT8_DYNAMIC = "int8_dynamic"
SCHEME_INT8_STATIC = "int8_static"
SCHEME_IBERT = "ibert"
# Per-token activations: on all-MiniLM-L6-v2, mean/min cosine 0.998/0.993 to fp32 where per-tensor gives
# 0.990/0.961; on SmolLM2 +2.7% perplexity where per-tensor gives +53% (examples/schemes_minilm.py,
# examples/llm_schemes_smollm2.py; docs/schemes.md).
DEFAULT_SCHEME = "int8_per_token"
FALLBACK_DTYPES = ("float32", "bfloat16")
TOLERANCE_MODES = ("relative", "absolute")


def metric_loss(fp32_value: float, value: float, higher_is_better: bool, mode: str = "relative") -> float:
    """How much worse ``value`` is than ``fp32_value`` (negative: better), as the raw difference
    (``"absolute"``) or relative to ``|fp32_value|``: the one rule the tuner, its record and the card use."""
    worse_by = fp32_value - value if higher_is_better else value - fp32_value
    if mode == "absolute":
        return worse_by
    if fp32_value == 0:
        raise ValueError("the fp32 metric value is 0, so a relative loss is undefined; use tolerance_mode='absolute'.")
    return worse_by / abs(fp32_value)


class ConfigError(ValueError):
    """A quantization_config (or one of its parts) is malformed."""


def _short(value, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters: a hostile config must not make a megabyte error message."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({type(value).__name__}, {len(text)} characters)"


def _check_keys(where: str, data: dict, allowed: set[str], required: set[str] = frozenset()) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - allowed, key=str)
    if unknown:
        shown = ", ".join(_short(key, 40) for key in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise ConfigError(f"{where} has unknown key(s) [{shown}]; allowed keys are {sorted(allowed)}")
    missing = sorted(required - set(data))
    if missing:
        raise ConfigError(f"{where} is missing required key(s) {missing}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_string_map(value) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


# The JSON type of each manifest and tuning-record field: (test, what the message says it must be).
_FIELD_KINDS = {
    "string": (lambda v: isinstance(v, str), "a string"),
    "number": (_is_number, "a number"),
    "count": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "a non-negative integer"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "names": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings"),
    "string map": (_is_string_map, "an object of strings"),
    "rows": (lambda v: isinstance(v, list) and all(
        isinstance(row, dict) and all(isinstance(k, str) and (v is None or isinstance(v, (str, int, float))) for k, v in row.items())
        for row in v), "a list of objects of strings, numbers and booleans"),
    "scale map": (lambda v: isinstance(v, dict) and all(isinstance(k, str) and isinstance(p, dict) for k, p in v.items()),
                  "an object of objects"),
}


def _check_fields(where: str, values: dict, kinds: dict[str, str], optional=frozenset()) -> None:
    """Each field of ``values`` named in ``kinds`` has its JSON type (null allowed for ``optional`` ones)."""
    for name, kind in kinds.items():
        if name not in values or (values[name] is None and name in optional):
            continue
        test, text = _FIELD_KINDS[kind]
        if not test(values[name]):
            raise ConfigError(f"{where}.{name} must be {text}{' or null' if name in optional else ''}, got {_short(values[name])}")


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape an int8 checkpoint, for the manifest."""
    versions = {}
    for name in ("optimum-int8", "torch", "transformers"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "unknown"
    return versions


@dataclasses.dataclass
class TuningRecord:
    """How an accuracy-aware tuning run chose the fallbacks (written by the tuner)."""

    metric: str
    fp32_value: float
    int8_value: float
    tolerance: float
    tolerance_mode: str = "relative"
    higher_is_better: bool = True
    trials: int = 0
    library_versions: dict[str, str] = dataclasses.field(default_factory=dict)
    # loss relative to |fp32_value| (sign: positive = int8 worse), whatever tolerance_mode is.
    relative_loss: float | None = None
    tolerance_met: bool | None = None
    # full evaluations spent, the fp32 baseline included; trials counts the int8 ones.
    evaluations: int = 0
    # one entry per int8 trial: index, fallbacks (count), fallback_dtype, value, loss, passed, seconds.
    trial_results: list[dict] = dataclasses.field(default_factory=list)
    fallback_dtype: str | None = None
    sensitivity_measure: str | None = None
    # "search complete", "tolerance unreachable", "max_trials" or "timeout".
    stop_reason: str | None = None

    _KINDS = {"metric": "string", "fp32_value": "number", "int8_value": "number", "tolerance": "number",
              "tolerance_mode": "string", "higher_is_better": "bool", "trials": "count", "library_versions": "string map",
              "relative_loss": "number", "tolerance_met": "bool", "evaluations": "count", "trial_results": "rows",
              "fallback_dtype": "string", "sensitivity_measure": "string", "stop_reason": "string"}
    _OPTIONAL = {"relative_loss", "tolerance_met", "fallback_dtype", "sensitivity_measure", "stop_reason"}

    def __post_init__(self, where: str = "tuning"):
        _check_fields(where, self.__dict__, self._KINDS, self._OPTIONAL)
        if self.tolerance_mode not in TOLERANCE_MODES:
            raise ConfigError(f"{where}.tolerance_mode must be one of {TOLERANCE_MODES}, got {_short(self.tolerance_mode)}")
        if not 0 <= self.tolerance < float("inf"):
            raise ConfigError(f"{where}.tolerance must be a finite number >= 0, got {_short(self.tolerance)}")

    @classmethod
    def from_dict(cls, data: dict, where: str = "tuning") -> "TuningRecord":
        fields = {f.name for f in dataclasses.fields(cls)}
        _check_keys(where, data, fields, {"metric", "fp32_value", "int8_value", "tolerance"})
        _check_fields(where, data, cls._KINDS, cls._OPTIONAL)
        return cls(**data)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class CalibrationRecord:
    """How a calibrated scheme measured its activations (written when quantizing with calibration data)."""

    samples: int
    observer: str | None = None
    # the configured SmoothQuant alpha (a number, or "auto"), null without smoothing
    smoothquant_alpha: float | str | None = None
    # "auto": the alpha chosen per module
    module_alphas: dict[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self, where: str = "manifest.calibration"):
        _check_fields(where, self.__dict__, {"samples": "count", "observer": "string"}, {"observer"})
        _check_smoothquant_alpha(f"{where}.smoothquant_alpha", self.smoothquant_alpha)
        if not isinstance(self.module_alphas, dict) or not all(
            isinstance(k, str) and _is_number(v) for k, v in self.module_alphas.items()
        ):
            raise ConfigError(f"{where}.module_alphas must be an object of numbers, got {_short(self.module_alphas)}")

    @classmethod
    def from_dict(cls, data: dict, where: str = "manifest.calibration") -> "CalibrationRecord":
        _check_keys(where, data, {f.name for f in dataclasses.fields(cls)}, {"samples"})
        return cls(**data)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_smoothquant_alpha(where: str, alpha) -> None:
    if alpha is None or alpha == "auto":
        return
    if not _is_number(alpha) or not 0 <= alpha <= 1:
        raise ConfigError(f"{where} must be a number in [0, 1], \"auto\" or null, got {_short(alpha)}")


@dataclasses.dataclass
class FallbackManifest:
    """Exactly which Linear modules are int8 and which were kept in float (and in which dtype)."""

    int8_modules: list[str]
    fallback_modules: dict[str, str] = dataclasses.field(default_factory=dict)
    created_with: dict[str, str] = dataclasses.field(default_factory=library_versions)
    tuning: TuningRecord | None = None
    # ibert scheme only: static activation scales, {integer module name: {point: scale}} (docs/format.md).
    activation_scales: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    # How the model ran when it was quantized: the int8 kernel plan and the compute dtype (a record, not a
    # setting: the config's kernel/compute_dtype decide how it runs when loaded).
    kernel: str | None = None
    compute_dtype: str | None = None
    # int8 modules whose scheme is not the config's (a tuner's repair): {module name: scheme name}
    module_schemes: dict[str, str] = dataclasses.field(default_factory=dict)
    calibration: CalibrationRecord | None = None
    # int8_static modules that also store calibrated output qparams and requantize their output with them
    # (legacy INC static checkpoints)
    output_qparams_modules: list[str] = dataclasses.field(default_factory=list)

    _KINDS = {"int8_modules": "names", "fallback_modules": "string map", "created_with": "string map",
              "activation_scales": "scale map", "kernel": "string", "compute_dtype": "string",
              "module_schemes": "string map", "output_qparams_modules": "names"}
    _OPTIONAL = {"kernel", "compute_dtype"}

    def __post_init__(self, where: str = "manifest"):
        _check_fields(where, self.__dict__, self._KINDS, self._OPTIONAL)
        if self.tuning is not None and not isinstance(self.tuning, TuningRecord):
            raise ConfigError(f"{where}.tuning must be a tuning record object or null, got {_short(self.tuning)}")
        if self.calibration is not None and not isinstance(self.calibration, CalibrationRecord):
            raise ConfigError(f"{where}.calibration must be a calibration record object or null, got {_short(self.calibration)}")
        for name, scheme in self.module_schemes.items():
            if scheme not in SCHEMES or SCHEMES[scheme].module_class is None:
                raise ConfigError(f"{where}.module_schemes[{_short(name)}] is {_short(scheme)}; a module's scheme must be "
                                  f"one of {[n for n, s in SCHEMES.items() if s.module_class is not None]}")
            if name not in self.int8_modules:
                raise ConfigError(f"{where}.module_schemes names {_short(name)}, which is not in {where}.int8_modules")
        for name in self.output_qparams_modules:
            if name not in self.int8_modules:
                raise ConfigError(f"{where}.output_qparams_modules names {_short(name)}, which is not in {where}.int8_modules")
        for name, points in self.activation_scales.items():
            if not all(_is_number(v) and 0 < v < float("inf") for v in points.values()):
                raise ConfigError(f"{where}.activation_scales[{_short(name)}] must map points to positive finite scales, got {_short(points)}")
        overlap = sorted(set(self.int8_modules) & set(self.fallback_modules))
        if overlap:
            raise ConfigError(f"manifest lists module(s) {overlap} both in int8_modules and fallback_modules")
        for name, dtype in self.fallback_modules.items():
            if dtype not in FALLBACK_DTYPES:
                raise ConfigError(
                    f"manifest.fallback_modules[{name!r}] is {dtype!r}; supported fallback dtypes are {FALLBACK_DTYPES}"
                )

    @classmethod
    def from_dict(cls, data: dict, where: str = "manifest") -> "FallbackManifest":
        _check_keys(where, data, {f.name for f in dataclasses.fields(cls)}, {"int8_modules"})
        _check_fields(where, data, cls._KINDS, cls._OPTIONAL)
        data = dict(data)
        if data.get("tuning") is not None:
            data["tuning"] = TuningRecord.from_dict(data["tuning"], f"{where}.tuning")
        if data.get("calibration") is not None:
            data["calibration"] = CalibrationRecord.from_dict(data["calibration"], f"{where}.calibration")
        return cls(**data)

    def scheme_of(self, module_name: str, config_scheme: str) -> str:
        """The scheme of one int8 module: its own, or the config's."""
        return self.module_schemes.get(module_name, config_scheme)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["tuning"] = self.tuning.to_dict() if self.tuning is not None else None
        data["calibration"] = self.calibration.to_dict() if self.calibration is not None else None
        for optional in ("activation_scales", "kernel", "compute_dtype", "module_schemes", "calibration",
                         "output_qparams_modules"):
            if not data[optional]:
                del data[optional]
        return data


class Int8Config(QuantizationConfigMixin):
    """int8 quantization of every Linear module except the fallbacks kept in float, with one of the schemes of
    ``optimum_int8.schemes`` (docs/schemes.md).

    Args:
        modules_in_fp32: module names to keep in fp32, exact (``"lm_head"``) or fnmatch globs
            (``"model.decoder.layers.*.fc2"``). Every entry must match at least one Linear module.
        modules_in_bf16: module names (or globs) to keep in bfloat16 instead: half the bytes of an fp32
            fallback, fast on CPUs with AVX-512 BF16 or AMX. A module may not be named in both lists.
        manifest: filled in when the model is quantized; lists the exact module names. A config read
            from a checkpoint always has one.
        scheme: ``"int8_dynamic"`` (activations per tensor per call), ``"int8_per_token"`` (per token),
            ``"int8_static"`` (calibrated scales: needs ``calibration_data``), ``"int8_weight_only"`` (float
            activations) or ``"ibert"`` (integer-only BERT/RoBERTa/I-BERT encoders, docs/ibert.md).
        module_schemes: ``{module name or glob: scheme}`` for modules that take another Linear scheme than
            ``scheme`` (e.g. the most sensitive ones in ``"int8_weight_only"``).
        smoothquant_alpha: SmoothQuant's migration strength in [0, 1], or ``"auto"`` (searched per module on
            the calibration data), for the per-token and static schemes; None: no smoothing.
        observer: how the static scheme sets its activation ranges: ``"minmax"`` or ``"histogram"``.
        kernel: the int8 GEMM backend, ``"auto"`` (per CPU and input rows, docs/kernels.md), ``"fbgemm"`` or
            ``"onednn"``. The environment variable ``OPTIMUM_INT8_KERNEL`` overrides ``"auto"``.
        compute_dtype: what the non-int8 parts compute in: ``"auto"`` (bf16 on CPUs with AMX-BF16, else
            fp32), ``"float32"`` or ``"bfloat16"``.
        reduce_range: 7-bit activations. None (default): only on CPUs without VNNI, whose int8 instructions
            need them; True reproduces torch.ao's x86 default (legacy INC checkpoints).
    """

    def __init__(
        self,
        modules_in_fp32: list[str] | None = None,
        modules_in_bf16: list[str] | None = None,
        manifest: FallbackManifest | dict | None = None,
        scheme: str = DEFAULT_SCHEME,
        module_schemes: dict[str, str] | None = None,
        smoothquant_alpha: float | str | None = None,
        observer: str | None = None,
        kernel: str = "auto",
        compute_dtype: str = "auto",
        reduce_range: bool | None = None,
        format_version: int = FORMAT_VERSION,
        quant_method: str = QUANT_METHOD,
    ):
        if quant_method != QUANT_METHOD:
            raise ConfigError(f"Int8Config reads quant_method {QUANT_METHOD!r}, got {quant_method!r}")
        if isinstance(format_version, bool) or format_version not in READABLE_FORMAT_VERSIONS:
            raise ConfigError(
                f"quantization_config.format_version is {format_version!r}; this optimum-int8 reads versions "
                f"{list(READABLE_FORMAT_VERSIONS)}. Upgrade optimum-int8 to load this checkpoint."
            )
        if kernel not in KERNEL_CHOICES:
            raise ConfigError(f"quantization_config.kernel is {kernel!r}; choose one of {list(KERNEL_CHOICES)}")
        if compute_dtype not in COMPUTE_DTYPE_CHOICES:
            raise ConfigError(
                f"quantization_config.compute_dtype is {compute_dtype!r}; choose one of {list(COMPUTE_DTYPE_CHOICES)}"
            )
        if reduce_range not in (None, True, False):
            raise ConfigError(f"quantization_config.reduce_range must be true, false or null, got {reduce_range!r}")
        if not isinstance(scheme, str) or scheme not in SCHEMES:
            raise ConfigError(f"quantization_config.scheme is {_short(scheme)}; supported schemes are {list(SCHEMES)}")
        scheme_unit = get_scheme(scheme)
        if not scheme_unit.supports_fallbacks and (modules_in_fp32 or modules_in_bf16 or module_schemes):
            raise ConfigError(
                f"the {scheme} scheme runs the whole encoder on integers and keeps only the task head in float; "
                "modules_in_fp32 / modules_in_bf16 / module_schemes apply to the Linear schemes."
            )
        if not _is_string_map(module_schemes or {}):
            raise ConfigError(f"quantization_config.module_schemes must be an object of scheme names, got {_short(module_schemes)}")
        for pattern, name in (module_schemes or {}).items():
            if name not in SCHEMES or SCHEMES[name].module_class is None:
                raise ConfigError(f"quantization_config.module_schemes[{pattern!r}] is {_short(name)}; a module's "
                                  f"scheme must be one of {[n for n, s in SCHEMES.items() if s.module_class is not None]}")
        _check_smoothquant_alpha("quantization_config.smoothquant_alpha", smoothquant_alpha)
        smoothing = [n for n in {scheme, *(module_schemes or {}).values()} if SCHEMES[n].smoothing]
        if smoothquant_alpha is not None and not smoothing:
            raise ConfigError(f"smoothquant_alpha applies to the {[n for n, s in SCHEMES.items() if s.smoothing]} "
                              f"schemes, not to {scheme!r}.")
        observers = {o for n in {scheme, *(module_schemes or {}).values()} for o in SCHEMES[n].observers}
        if observer is not None and observer not in observers:
            raise ConfigError(
                f"quantization_config.observer is {_short(observer)}; "
                + (f"choose one of {sorted(observers)}" if observers else f"the {scheme!r} scheme has no static activation scales to observe")
            )
        for key, names in (("modules_in_fp32", modules_in_fp32), ("modules_in_bf16", modules_in_bf16)):
            if isinstance(names, str) or not all(isinstance(m, str) for m in names or []):
                raise ConfigError(f"{key} must be a list of module names (strings)")
        self.quant_method = QUANT_METHOD
        self.format_version = FORMAT_VERSION
        self.scheme = scheme
        self.module_schemes = dict(module_schemes or {})
        self.smoothquant_alpha = smoothquant_alpha
        self.observer = observer
        self.kernel = kernel
        self.compute_dtype = compute_dtype
        self.reduce_range = reduce_range
        self.modules_in_fp32 = list(modules_in_fp32 or [])
        self.modules_in_bf16 = list(modules_in_bf16 or [])
        self.manifest = FallbackManifest.from_dict(manifest, "quantization_config.manifest") if isinstance(manifest, dict) else manifest
        for name in self.manifest.output_qparams_modules if self.manifest is not None else ():
            if self.manifest.scheme_of(name, scheme) != SCHEME_INT8_STATIC:
                raise ConfigError(
                    f"quantization_config.manifest.output_qparams_modules names {_short(name)}, whose scheme is "
                    f"{self.manifest.scheme_of(name, scheme)!r}; only {SCHEME_INT8_STATIC} modules have output qparams."
                )

    @classmethod
    def from_dict(cls, config_dict: dict, return_unused_kwargs: bool = False, **kwargs) -> "Int8Config":
        allowed = {"quant_method", "format_version", "scheme", "modules_in_fp32", "modules_in_bf16", "manifest",
                   "kernel", "compute_dtype", "reduce_range", "module_schemes", "smoothquant_alpha", "observer"}
        _check_keys("quantization_config", config_dict, allowed, {"quant_method"})
        # A stored config without a scheme predates the schemes registry: it was dynamic int8 per tensor.
        config = cls(**{"scheme": SCHEME_INT8_DYNAMIC} | config_dict)
        return (config, kwargs) if return_unused_kwargs else config

    @property
    def needs_calibration_data(self) -> bool:
        """Whether quantizing with this config needs calibration data (static scales or SmoothQuant)."""
        schemes = [get_scheme(n) for n in {self.scheme, *self.module_schemes.values()}]
        return self.smoothquant_alpha is not None or any(s.calibration == CALIBRATION_REQUIRED for s in schemes)

    @property
    def takes_calibration_data(self) -> bool:
        """Whether quantizing with this config uses calibration data when given some."""
        return self.needs_calibration_data or any(get_scheme(n).calibration != CALIBRATION_NONE for n in {self.scheme, *self.module_schemes.values()})

    def to_dict(self) -> dict[str, Any]:
        return {
            "quant_method": self.quant_method,
            "format_version": self.format_version,
            "scheme": self.scheme,
            "module_schemes": dict(self.module_schemes),
            "smoothquant_alpha": self.smoothquant_alpha,
            "observer": self.observer,
            "kernel": self.kernel,
            "compute_dtype": self.compute_dtype,
            "reduce_range": self.reduce_range,
            "modules_in_fp32": list(self.modules_in_fp32),
            "modules_in_bf16": list(self.modules_in_bf16),
            "manifest": self.manifest.to_dict() if self.manifest is not None else None,
        }

    def to_diff_dict(self) -> dict[str, Any]:
        return self.to_dict()
