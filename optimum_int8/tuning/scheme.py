"""Our scheme registered with neural-compressor 3.x: a config class and the algorithm that applies it.

A trial's config is ``Int8DynamicFallbackConfig`` (global dtype ``"int8"``) with per-module local
configs of dtype ``"fp32"`` or ``"bf16"`` for the modules kept in float (neural-compressor's own way of
saying "this op falls back"), or ``"int8_wo"`` for modules repaired with weight-only int8 instead. Trials
differ only in those local configs. The registered algorithm turns the resolved per-module mapping into the
user's ``Int8Config`` (its scheme, module schemes, SmoothQuant) plus those fallbacks and runs
``quantize_model``, with the calibration data of the run (``trial_base``).
"""

import contextlib
import contextvars
import copy
import logging
import re

import torch
from transformers.pytorch_utils import Conv1D

from .. import linear_modules
from ..configuration import Int8Config
from ..quantizer import quantize_model

NC_LOGGER = "neural_compressor"
ALGO_NAME = "optimum_int8_dynamic"
FRAMEWORK_NAME = "torch"
# neural-compressor's dtype names for a module's precision -> the manifest's fallback dtype names.
FALLBACK_DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16"}
# Repairs that keep a module int8, with a more accurate scheme: neural-compressor dtype -> scheme name.
REPAIR_SCHEME_NAMES = {"int8_wo": "int8_weight_only"}
NC_DTYPE_NAMES = {value: key for key, value in (FALLBACK_DTYPE_NAMES | REPAIR_SCHEME_NAMES).items()}
MODULE_DTYPES = ("int8", *FALLBACK_DTYPE_NAMES, *REPAIR_SCHEME_NAMES)
# What every trial builds on: the user's Int8Config and calibration data (set by the tuner around a run).
_TRIAL_BASE: contextvars.ContextVar = contextvars.ContextVar("optimum_int8_trial_base", default=(None, None))


@contextlib.contextmanager
def trial_base(config: Int8Config, calibration_data=None):
    """Make every trial quantize with ``config`` (plus its fallbacks) and ``calibration_data``."""
    token = _TRIAL_BASE.set((config, calibration_data))
    try:
        yield
    finally:
        _TRIAL_BASE.reset(token)


def _import_neural_compressor():
    """Import neural-compressor's torch API without the warnings it logs at import time."""
    from neural_compressor.common.utils import logger as _  # noqa: F401  (creates the "neural_compressor" logger)

    nc_logger = logging.getLogger(NC_LOGGER)
    level = nc_logger.level
    nc_logger.setLevel(logging.ERROR)
    try:
        import neural_compressor.torch.quantization as nc_quantization
    finally:
        nc_logger.setLevel(level)
    return nc_quantization


@contextlib.contextmanager
def neural_compressor_logs(verbose: bool):
    """Quiet neural-compressor's INFO/WARNING chatter (per-trial tables, config dumps) unless ``verbose``."""
    nc_logger = logging.getLogger(NC_LOGGER)
    level = nc_logger.level
    nc_logger.setLevel(logging.INFO if verbose else logging.ERROR)
    try:
        yield
    finally:
        nc_logger.setLevel(level)


nc_quantization = _import_neural_compressor()
from neural_compressor.common.base_config import register_config  # noqa: E402
from neural_compressor.common.utils import DEFAULT_WHITE_LIST, Mode  # noqa: E402
from neural_compressor.torch.quantization.config import OperatorConfig, TorchBaseConfig  # noqa: E402
from neural_compressor.torch.utils.utility import register_algo  # noqa: E402


@register_config(framework_name=FRAMEWORK_NAME, algo_name=ALGO_NAME)
class Int8DynamicFallbackConfig(TorchBaseConfig):
    """Dynamic int8 for every Linear/Conv1D module; local configs with dtype fp32/bf16 keep modules in float."""

    name = ALGO_NAME
    supported_configs: list = []

    def __init__(self, dtype: str = "int8", white_list=DEFAULT_WHITE_LIST, **kwargs):
        if dtype not in MODULE_DTYPES:
            raise ValueError(f"Int8DynamicFallbackConfig dtype must be one of {MODULE_DTYPES}, got {dtype!r}")
        super().__init__(white_list=white_list)
        self.dtype = dtype
        self._post_init()

    @classmethod
    def with_fallbacks(cls, fallbacks: dict[str, str]) -> "Int8DynamicFallbackConfig":
        """A config keeping ``{module name: "float32" | "bfloat16"}`` in float (or repairing it with
        ``"int8_weight_only"``), everything else int8."""
        config = cls()
        for dtype in sorted(set(fallbacks.values())):
            names = [f"{re.escape(name)}$" for name, d in fallbacks.items() if d == dtype]
            config.set_local(names, cls(dtype=NC_DTYPE_NAMES[dtype], white_list=None))
        return config

    @classmethod
    def register_supported_configs(cls):
        cls.supported_configs = [OperatorConfig(config=cls(), operators=[torch.nn.Linear, Conv1D])]

    @staticmethod
    def get_model_info(model: torch.nn.Module) -> list[tuple[str, str]]:
        return [(name, type(module).__name__) for name, module in linear_modules.find_float_linears(model).items()]

    @classmethod
    def get_config_set_for_tuning(cls) -> "Int8DynamicFallbackConfig":
        return cls()


@register_algo(ALGO_NAME)
@torch.no_grad()
def int8_dynamic_entry(model, configs_mapping, mode=Mode.QUANTIZE, *args, **kwargs):
    """neural-compressor's algorithm entry: quantize ``model`` in place as the per-module mapping says."""
    if mode != Mode.QUANTIZE:
        raise ValueError(f"{ALGO_NAME} is dynamic quantization: it has no {mode} step; call quantize().")
    fallbacks = {dtype: [] for dtype in MODULE_DTYPES[1:]}
    for (op_name, _), config in configs_mapping.items():
        if config.name == ALGO_NAME and config.dtype in fallbacks:
            fallbacks[config.dtype].append(op_name)
    base, calibration_data = _TRIAL_BASE.get()
    trial = copy.deepcopy(base) if base is not None else Int8Config()
    trial.modules_in_fp32 = fallbacks["fp32"]
    trial.modules_in_bf16 = fallbacks["bf16"]
    for dtype, scheme in REPAIR_SCHEME_NAMES.items():
        trial.module_schemes |= dict.fromkeys(fallbacks[dtype], scheme)
    return quantize_model(model, trial, calibration_data=calibration_data if trial.needs_calibration_data else None)
