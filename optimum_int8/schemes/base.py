"""What a quantization scheme is: one unit that says which modules it replaces and with what, what calibration it
needs, what it writes to the checkpoint, and how it loads (docs/schemes.md)."""

import dataclasses
import importlib
from collections.abc import Callable

import torch
from torch import nn

# What calibration data a scheme takes besides SmoothQuant's (any scheme with ``smoothing``): none, optional,
# or required (static scales).
CALIBRATION_NONE, CALIBRATION_OPTIONAL, CALIBRATION_REQUIRED = "none", "optional", "required"


@dataclasses.dataclass(frozen=True)
class ModuleCalibration:
    """What calibration measured for one Linear module: its SmoothQuant factor and its static input qparams."""

    smooth_scale: torch.Tensor | None = None
    input_qparams: tuple[float, int] | None = None


@dataclasses.dataclass(frozen=True)
class Scheme:
    """One quantization scheme.

    ``module_class`` replaces each quantized ``nn.Linear``/``Conv1D`` and ``convert(weight, bias, calibration)``
    builds it from the float [out, in] weight (unpacked; the quantizer packs it). A scheme that converts whole
    blocks instead (I-BERT) has no module class and names its own HfQuantizer in ``quantizer``
    (``"module:Class"``, imported when used, so that the registry imports no quantizer).
    """

    name: str
    summary: str
    card_tag: str
    card_sentence: str
    module_class: type[nn.Module] | None = None
    convert: Callable | None = None
    calibration: str = CALIBRATION_NONE
    smoothing: bool = False
    # Observers that set static activation scales (the first is the default); empty: the scheme has none.
    observers: tuple[str, ...] = ()
    supports_fallbacks: bool = True
    # Its modules trace under torch.compile without graph breaks, so a causal LM quantized with it (and only with
    # such schemes) decodes through a compiled step (optimum_int8/generation.py).
    compiles: bool = False
    quantizer: str | None = None

    def quantizer_class(self):
        """The scheme's own HfQuantizer class, or None when the Linear-replacing quantizer serves it."""
        if self.quantizer is None:
            return None
        module_name, _, class_name = self.quantizer.partition(":")
        return getattr(importlib.import_module(module_name), class_name)

    def skeleton(self, in_features: int, out_features: int, bias: bool, smoothed: bool,
                 requantized: bool = False) -> nn.Module:
        """An empty module to load a checkpoint's tensors into (call under ``torch.device("meta")``);
        ``requantized``: with calibrated output qparams (``int8_static`` modules of legacy INC checkpoints)."""
        options = {"smoothed": True} if smoothed else {}
        if requantized:
            options["requantized"] = True
        return self.module_class(in_features, out_features, bias=bias, **options)
