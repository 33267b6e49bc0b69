"""SmoothQuant's per-channel factors (Xiao et al., 2023): ``s_j = max|x_j|^alpha / max|w_j|^(1 - alpha)``.

Dividing input channel ``j`` by ``s_j`` and multiplying weight column ``j`` by it moves the activation's outlier
channels into the weight, which per-channel weight scales absorb. ``alpha="auto"`` picks, per module, the alpha
in ``ALPHA_GRID`` whose quantized product is closest (mean squared error) to the float product on rows sampled
from calibration; neural-compressor's auto-alpha does the same per block, through intel-extension-for-pytorch.
"""

import torch

ALPHA_GRID = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
_SCALE_RANGE = (1e-5, 1e5)


def factors(channel_maxima: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """The factors for one module; channels that never fired (or have zero weights) get 1."""
    weight_maxima = weight.abs().amax(dim=0)
    scales = channel_maxima.clamp(min=1e-12).pow(alpha) / weight_maxima.clamp(min=1e-12).pow(1 - alpha)
    scales = scales.clamp(*_SCALE_RANGE)
    return torch.where((channel_maxima > 0) & (weight_maxima > 0), scales, torch.ones_like(scales)).float()


def _fake_quantized_product(rows: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, per_token: bool,
                            qmax: int) -> torch.Tensor:
    x = rows / scales
    w = weight * scales[None, :]
    w_scale = (w.abs().amax(dim=1, keepdim=True) / 127).clamp(min=1e-12)
    w_q = torch.round(w / w_scale).clamp(-127, 127) * w_scale
    if per_token:
        low, high = x.amin(dim=1, keepdim=True).clamp(max=0), x.amax(dim=1, keepdim=True).clamp(min=0)
        x_scale = ((high - low) / 255).clamp(min=1e-12)
        zero_point = torch.round(-low / x_scale)
        x_q = (torch.round(x / x_scale) + zero_point).clamp(0, 255).sub(zero_point) * x_scale
    else:
        low, high = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
        scale = (high - low) / qmax or 1.0
        zero_point = round(-low / scale)
        x_q = (torch.round(x / scale) + zero_point).clamp(0, qmax).sub(zero_point) * scale
    return x_q @ w_q.t()


def smooth_scale(channel_maxima, weight, alpha, rows, scheme, qmax: int) -> tuple[torch.Tensor, float]:
    """(factors, alpha used) for one module; ``alpha`` a number or ``"auto"`` (searched on ``rows``)."""
    if alpha != "auto":
        return factors(channel_maxima, weight, float(alpha)), float(alpha)
    sample = torch.cat(rows)
    reference = sample @ weight.t()
    per_token = not scheme.observers
    errors = {
        candidate: float((_fake_quantized_product(sample, weight, factors(channel_maxima, weight, candidate),
                                                  per_token, qmax) - reference).pow(2).mean())
        for candidate in ALPHA_GRID
    }
    best = min(errors, key=errors.get)
    return factors(channel_maxima, weight, best), best
