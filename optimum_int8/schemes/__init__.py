"""The quantization schemes: the one registry the config, the HfQuantizer, ``quantize_model``, the tuner, the CLI,
the model card and the benchmark read. Adding a scheme is one module here and one entry in ``SCHEMES``."""

from . import ibert, int8_dynamic, int8_per_token, int8_static, int8_weight_only
from .base import CALIBRATION_NONE, CALIBRATION_OPTIONAL, CALIBRATION_REQUIRED, ModuleCalibration, Scheme

SCHEMES: dict[str, Scheme] = {
    module.SCHEME.name: module.SCHEME
    for module in (int8_dynamic, int8_per_token, int8_static, int8_weight_only, ibert)
}
SCHEME_NAMES = tuple(SCHEMES)


def get_scheme(name: str) -> Scheme:
    try:
        return SCHEMES[name]
    except (KeyError, TypeError):
        raise ValueError(f"quantization scheme {name!r} is unknown; choose one of {list(SCHEMES)}") from None


def scheme_of_module_class(module_class: type) -> Scheme | None:
    """The scheme whose Linear replacement ``module_class`` is."""
    return next((scheme for scheme in SCHEMES.values() if scheme.module_class is module_class), None)


__all__ = ["CALIBRATION_NONE", "CALIBRATION_OPTIONAL", "CALIBRATION_REQUIRED", "SCHEMES", "SCHEME_NAMES",
           "ModuleCalibration", "Scheme", "get_scheme", "scheme_of_module_class"]
