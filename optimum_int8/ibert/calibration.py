"""Static activation scales for the ibert scheme: from calibration data, or from a calibrated I-BERT model.

Scales are keyed like the integer modules that use them, relative to the base model (``embeddings``,
``encoder.layer.3.attention.self``, ...), each a ``{point: scale}`` dict (``nn.integer_layers``). A scale
maps the largest absolute value observed at that point onto the point's signed integer range.
"""

import copy
import math
from collections import defaultdict

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from ..nn import integer_ops as ops
from ..nn.integer_layers import IntegerEncoderLayer
from .modules import IntegerEmbeddings

# The 16-bit exp of the integer softmax holds values in (0, 1] whatever the input: no calibration needed.
EXP_RANGE = 1.0
_UNCALIBRATED_RANGE = 1.1e-5


def _bits(path: str, point: str) -> int:
    if path == "embeddings":
        return IntegerEmbeddings.scale_bits[point]
    return IntegerEncoderLayer.scaled_modules[path.split(".", 3)[3]].scale_bits[point]


def _layer_paths(config) -> list[str]:
    return [f"encoder.layer.{index}" for index in range(config.num_hidden_layers)]


def _observation_points(config) -> list[tuple[str, str, str, str]]:
    """``(float module path, "input" | "output", integer module path, point)`` for every calibrated tensor."""
    points = [
        ("embeddings.LayerNorm", "input", "embeddings", "sum"),
        ("embeddings.LayerNorm", "output", "embeddings", "output"),
    ]
    for layer in _layer_paths(config):
        attention = f"{layer}.attention.self"
        points += [(f"{attention}.{name}", "output", attention, name) for name in ("query", "key", "value")]
        points += [
            (f"{layer}.attention.output.dense", "input", attention, "context"),
            (f"{layer}.attention.output.LayerNorm", "input", f"{layer}.attention.output", "residual"),
            (f"{layer}.attention.output.LayerNorm", "output", f"{layer}.attention.output", "output"),
            (f"{layer}.output.dense", "input", f"{layer}.intermediate", "output"),
            (f"{layer}.output.LayerNorm", "input", f"{layer}.output", "residual"),
            (f"{layer}.output.LayerNorm", "output", f"{layer}.output", "output"),
        ]
    return points


def _first_tensor(value) -> torch.Tensor:
    # I-BERT's modules return (tensor, scaling factor) and take (tensor, scaling factor).
    return value[0] if isinstance(value, (tuple, list)) else value


def _float_twin(model: PreTrainedModel) -> PreTrainedModel:
    """An I-BERT model with ``quant_mode=True`` simulates quantization with its (maybe uncalibrated) ranges; a
    calibration must observe the float computation, so run a ``quant_mode=False`` copy sharing the weights."""
    if not getattr(model.config, "quant_mode", False):
        return model
    config = copy.deepcopy(model.config)
    config.quant_mode = False
    twin = type(model)(config).eval()
    twin.load_state_dict(model.state_dict(), assign=True)
    return twin


def calibrate(model: PreTrainedModel, calibration_data) -> dict[str, dict[str, float]]:
    """Run the float ``model`` on ``calibration_data`` (an iterable of input dicts, e.g. tokenizer outputs)
    and return the static activation scales of its integer-only version."""
    runner = _float_twin(model)
    base = runner.base_model
    maxima: dict[tuple[str, str], float] = defaultdict(float)
    handles = []

    def observe(key):
        def record(tensor):
            maxima[key] = max(maxima[key], float(_first_tensor(tensor).detach().abs().amax()))
        return record

    try:
        for module_path, where, path, point in _observation_points(model.config):
            module = base.get_submodule(module_path)
            record = observe((path, point))
            if where == "input":
                handles.append(module.register_forward_pre_hook(lambda _m, args, record=record: record(args[0])))
            else:
                handles.append(module.register_forward_hook(lambda _m, _a, out, record=record: record(out)))
        was_training = runner.training
        runner.eval()
        batches = 0
        with torch.no_grad():
            for batch in tqdm(calibration_data, desc="Calibrating activation scales", unit="batch", leave=False):
                runner(**batch)
                batches += 1
        runner.train(was_training)
    finally:
        for handle in handles:
            handle.remove()
    if batches == 0:
        raise ValueError("calibration_data is empty: the ibert scheme needs at least one batch to set activation scales.")
    scales: dict[str, dict[str, float]] = defaultdict(dict)
    for (path, point), maximum in maxima.items():
        scales[path][point] = ops.activation_scale(maximum, _bits(path, point))
    for layer in _layer_paths(model.config):
        scales[f"{layer}.attention.self"]["exp"] = ops.activation_scale(EXP_RANGE, ops.EXP_BITS)
    return dict(scales)


# ---- Ranges an I-BERT model learned (quantization-aware training) or calibrated itself -----------------------


def _ibert_quant_acts(config) -> list[tuple[str, str, str]]:
    """``(QuantAct path, integer module path, point)``. I-BERT requantizes the attention output and the GELU
    output a second time (``pre_intermediate_act``, ``pre_output_act``) before they are used; those are the
    ranges the next layer sees, so they are the ones taken."""
    acts = [("embeddings.embeddings_act1", "embeddings", "sum"), ("embeddings.output_activation", "embeddings", "output")]
    for layer in _layer_paths(config):
        attention = f"{layer}.attention.self"
        acts += [(f"{attention}.{name}_activation", attention, name) for name in ("query", "key", "value")]
        acts += [
            (f"{attention}.output_activation", attention, "context"),
            (f"{attention}.softmax.act", attention, "exp"),
            (f"{layer}.attention.output.ln_input_act", f"{layer}.attention.output", "residual"),
            (f"{layer}.pre_intermediate_act", f"{layer}.attention.output", "output"),
            (f"{layer}.pre_output_act", f"{layer}.intermediate", "output"),
            (f"{layer}.output.ln_input_act", f"{layer}.output", "residual"),
            (f"{layer}.output.output_activation", f"{layer}.output", "output"),
        ]
    return acts


def ibert_ranges_calibrated(model: PreTrainedModel) -> bool:
    """Whether every activation range of an I-BERT model left its initial +-1e-5 (it was trained or calibrated)."""
    if model.config.model_type != "ibert":
        return False
    base = model.base_model
    return all(
        float(base.get_submodule(act).x_max.abs().max()) > _UNCALIBRATED_RANGE
        for act, _, _ in _ibert_quant_acts(model.config)
    )


def scales_from_ibert(model: PreTrainedModel) -> dict[str, dict[str, float]]:
    """The activation scales an I-BERT model's own ``QuantAct`` ranges define.

    I-BERT's softmax requantizes its integer exp (not the exp's value) with a range observed on those
    integers; the equivalent scale of the exp's value is ``a * score_scale**2 / 2**30 * range / 32767``.
    """
    base = model.base_model
    scales: dict[str, dict[str, float]] = defaultdict(dict)
    for act_path, path, point in _ibert_quant_acts(model.config):
        act = base.get_submodule(act_path)
        observed = max(float(act.x_min.abs().max()), float(act.x_max.abs().max()))
        scales[path][point] = ops.activation_scale(observed, act.activation_bit)
    head_size = model.config.hidden_size // model.config.num_attention_heads
    for layer in _layer_paths(model.config):
        attention = scales[f"{layer}.attention.self"]
        score_scale = attention["query"] * attention["key"] / math.sqrt(head_size)
        attention["exp"] *= ops.EXP_POLY[0] * score_scale**2 / 2**30
    return dict(scales)
