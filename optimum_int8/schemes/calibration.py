"""Calibration of the W8A8 schemes: run the float model on calibration batches and measure, at the input of
each Linear module to quantize, what its scheme needs: per-channel maxima for SmoothQuant, and a torch.ao
observer's range for static activation scales.

neural-compressor 3.x's SmoothQuant and static quantization run through intel-extension-for-pytorch's
quantized graph, not on these modules, so the statistics are taken here; the observers are torch's own
(``MinMaxObserver``, ``HistogramObserver``), as neural-compressor's own torch backends use.
"""

import warnings

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers.pytorch_utils import Conv1D

from . import smoothquant
from .base import ModuleCalibration, Scheme

OBSERVERS = ("minmax", "histogram")
# Input rows kept per module for the SmoothQuant alpha search.
_SEARCH_ROWS = 512


def _observer(name: str, qmax: int):
    from torch.ao.quantization import observer

    classes = {"minmax": observer.MinMaxObserver, "histogram": observer.HistogramObserver}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return classes[name](dtype=torch.quint8, qscheme=torch.per_tensor_affine, quant_min=0, quant_max=qmax)


class _InputStatistics:
    """What one module's inputs showed: per-channel |x| maxima, a row sample, an observer."""

    def __init__(self, want_maxima: bool, want_rows: bool, observer):
        self.maxima = None if not want_maxima else 0
        self.rows = [] if want_rows else None
        self.observer = observer
        self.multiplier = None  # 1 / smooth_scale, once known: the observer then sees the smoothed input

    def record(self, x: torch.Tensor) -> None:
        rows = x.detach().reshape(-1, x.shape[-1]).float()
        if self.maxima is not None:
            self.maxima = torch.maximum(torch.as_tensor(self.maxima), rows.abs().amax(dim=0))
        if self.rows is not None and sum(len(r) for r in self.rows) < _SEARCH_ROWS:
            picked = torch.randperm(len(rows), generator=torch.Generator().manual_seed(len(self.rows)))[:128]
            self.rows.append(rows[picked])
        if self.observer is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.observer(rows if self.multiplier is None else rows * self.multiplier)


def _run(model: nn.Module, calibration_data, statistics: dict[str, _InputStatistics], what: str) -> int:
    handles = [
        model.get_submodule(name).register_forward_pre_hook(lambda _m, args, s=stats: s.record(args[0]))
        for name, stats in statistics.items()
    ]
    batches = 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in tqdm(calibration_data, desc=what, unit="batch", leave=False):
                if not isinstance(batch, dict):
                    raise TypeError(
                        f"calibration_data must yield dicts of model inputs (e.g. a tokenizer's output), got "
                        f"{type(batch).__name__}"
                    )
                model(**batch)
                batches += 1
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    if batches == 0:
        raise ValueError("calibration_data is empty: give at least one batch of model inputs.")
    return batches


def float_weight(module: nn.Module) -> torch.Tensor:
    return (module.weight.t() if isinstance(module, Conv1D) else module.weight).detach().float()


def calibrate(model: nn.Module, schemes: dict[str, Scheme], calibration_data, smoothquant_alpha=None,
              observer: str | None = None, qmax: int = 255) -> tuple[dict[str, ModuleCalibration], int, dict[str, float]]:
    """Calibrate the float modules named in ``schemes`` (module name -> its scheme) on ``calibration_data``, an
    iterable (re-iterable when two passes are needed) of model input dicts.

    ``smoothquant_alpha``: None (no smoothing), a migration strength in [0, 1], or ``"auto"`` (searched per
    module). Returns ``({module name: ModuleCalibration}, batches seen, {module name: alpha used})``.
    """
    smoothed = {name for name, scheme in schemes.items() if scheme.smoothing and smoothquant_alpha is not None}
    static = {name for name, scheme in schemes.items() if scheme.observers}
    batches_data = calibration_data if isinstance(calibration_data, (list, tuple)) else list(calibration_data)
    # First pass: channel maxima (and row samples) for smoothing; observers straight away where nothing is smoothed.
    statistics = {
        name: _InputStatistics(name in smoothed, name in smoothed and smoothquant_alpha == "auto",
                               _observer(observer or schemes[name].observers[0], qmax) if name in static - smoothed else None)
        for name in schemes if name in smoothed or name in static
    }
    batches = _run(model, batches_data, statistics, "Calibrating activations") if statistics else 0
    smooth_scales, alphas = {}, {}
    for name in sorted(smoothed):
        module = model.get_submodule(name)
        stats = statistics[name]
        smooth_scales[name], alphas[name] = smoothquant.smooth_scale(
            stats.maxima, float_weight(module), smoothquant_alpha, stats.rows, schemes[name], qmax
        )
    smoothed_static = static & smoothed
    if smoothed_static:
        second = {}
        for name in smoothed_static:
            stats = _InputStatistics(False, False, _observer(observer or schemes[name].observers[0], qmax))
            stats.multiplier = torch.reciprocal(smooth_scales[name])
            second[name] = stats
        _run(model, batches_data, second, "Calibrating smoothed activations")
        statistics.update(second)
    calibration = {}
    for name in schemes:
        qparams = None
        if name in static:
            scale, zero_point = statistics[name].observer.calculate_qparams()
            qparams = (float(scale), int(zero_point))
        calibration[name] = ModuleCalibration(smooth_scales.get(name), qparams)
    return calibration, batches, alphas
