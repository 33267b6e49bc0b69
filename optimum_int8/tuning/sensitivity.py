"""Rank Linear modules by how much quantizing each one alone changes the model's output.

Measure: quantize one module to int8 (all others fp32), run the calibration batches, and compare the
model's output distribution with the fp32 one: the mean KL divergence KL(p_fp32 || p_int8) of the
softmax over logits (per token, padding excluded; start/end distributions for extractive QA), or the
relative squared error of the output for models without logits. It is measured at the output, so a
module whose error is amplified downstream (or whose error a LayerNorm washes out) is scored by what
the metric will see, not by its local weight error. Cost: one forward pass of the calibration set
per Linear module, once per tuning run. Under torch.distributed each rank scores a contiguous share of
the modules and the scores are gathered, so every rank ranks the same way in a fraction of the time.
"""

import torch
from tqdm.auto import tqdm

from ..evaluation import distributed
from ..nn import Int8DynamicLinear

MEASURE = "output KL divergence, one module quantized at a time"


def _output_tensors(output) -> tuple[str, list[torch.Tensor]]:
    if getattr(output, "logits", None) is not None:
        return "distribution", [output.logits]
    if getattr(output, "start_logits", None) is not None:
        return "distribution", [output.start_logits, output.end_logits]
    return "values", [output[0]]


def _position_mask(batch: dict, tensor: torch.Tensor) -> torch.Tensor | None:
    """Which (batch, position) entries count: labelled decoder positions, else attended tokens."""
    if tensor.dim() < 3:
        return None
    for key, keep in (("labels", lambda t: t != -100), ("attention_mask", lambda t: t.bool())):
        value = batch.get(key)
        if isinstance(value, torch.Tensor) and value.shape == tensor.shape[:2]:
            return keep(value)
    return None


class _Reference:
    """fp32 outputs of one calibration batch, kept in the form the divergence needs."""

    def __init__(self, batch: dict, output):
        self.kind, tensors = _output_tensors(output)
        self.masks = [_position_mask(batch, tensor) for tensor in tensors]
        if self.kind == "distribution":
            self.tensors = [torch.log_softmax(tensor.double(), dim=-1) for tensor in tensors]
        else:
            self.tensors = [tensor.float() for tensor in tensors]

    def divergence(self, output) -> float:
        _, tensors = _output_tensors(output)
        total = 0.0
        for reference, tensor, mask in zip(self.tensors, tensors, self.masks):
            if self.kind == "distribution":
                log_q = torch.log_softmax(tensor.double(), dim=-1)
                per_position = (reference.exp() * (reference - log_q)).sum(-1)
                total += float(per_position[mask].mean() if mask is not None else per_position.mean())
            else:
                total += float((tensor.float() - reference).pow(2).sum() / reference.pow(2).sum().clamp(min=1e-12))
        return total


@torch.inference_mode()
def rank_by_sensitivity(model, module_names: list[str], batches: list[dict], show_progress: bool = True) -> list[tuple[str, float]]:
    """``[(module name, score)]`` most sensitive first. The model is left exactly as it was."""
    if not batches:
        raise ValueError("sensitivity ranking needs at least one calibration batch")
    model.eval()
    mine = [module_names[index] for index in distributed.shard(len(module_names))]

    def score_my_share() -> dict[str, float]:
        references = [_Reference(batch, model(**batch)) for batch in batches]
        scores = {}
        for name in tqdm(mine, desc="Ranking modules by int8 sensitivity", unit="module", leave=False,
                         disable=not (show_progress and distributed.is_main_process())):
            original = model.get_submodule(name)
            model.set_submodule(name, Int8DynamicLinear.from_float(original))
            try:
                scores[name] = sum(ref.divergence(model(**batch)) for ref, batch in zip(references, batches)) / len(batches)
            finally:
                model.set_submodule(name, original)
        return scores

    scores = {}
    for share in distributed.on_every_rank(score_my_share, what="ranking modules by sensitivity"):
        scores |= share
    return sorted(((name, scores[name]) for name in module_names), key=lambda item: item[1], reverse=True)
