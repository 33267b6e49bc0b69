"""The ibert scheme in ``optimum-int8 benchmark``: RoBERTa-base and BERT-base presets, two workloads, four variants.

    flock /tmp/optimum-int8-cpu.lock optimum-int8 benchmark roberta-base --workloads forward \\
        --variants fp32 bf16 int8 ibert ibert-eager fp32-compiled ibert-simulation
    flock /tmp/optimum-int8-cpu.lock optimum-int8 benchmark roberta-base --workloads first-forward \\
        --variants fp32 ibert --repeats 1 --warmup 0

Every variant is built from the preset's fp32 checkpoint (random seeded weights) and timed by the shared
runner, interleaved, so the ratios come from one run:

- ``ibert``: our integer-only model (activation scales calibrated on random token batches) as
  ``from_pretrained`` returns it: its integer stages on the native kernels (``compilation``), loaded in the warm-up
  call (and built there, on a machine that never ran them);
- ``ibert-eager``: the same checkpoint on the eager reference ops (``compile_integer_layers(model, False)``);
- ``fp32-compiled``: ``torch.compile`` of the fp32 model, the like-for-like reference for ``ibert``;
- ``ibert-simulation``: transformers' ``IBertForSequenceClassification`` in ``quant_mode=True`` with the same
  weights, its activation ranges recorded by a calibration pass (RoBERTa checkpoints only).
"""

from pathlib import Path

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    IBertConfig,
    IBertForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from ..benchmark.presets import ModelPreset, register_preset
from ..benchmark.variants import Variant, load_float32, load_int8, model_class, register_variant
from ..benchmark.workloads import (
    WORKLOADS,
    Workload,
    cold_first_call_workload,
    is_encoder_only,
    random_token_ids,
    register_workload,
)
from ..configuration import Int8Config
from ..quantizer import quantize_model
from .modules import compile_integer_layers

ROBERTA_BASE_SHAPE = dict(
    vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
    max_position_embeddings=514, type_vocab_size=1, pad_token_id=1, num_labels=2,
)
BERT_BASE_SHAPE = dict(
    vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
    max_position_embeddings=512, type_vocab_size=2, pad_token_id=0, num_labels=2,
)
# What I-BERT's config shares with the RoBERTa it is built from.
_SHARED_CONFIG = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                  "max_position_embeddings", "type_vocab_size", "pad_token_id", "layer_norm_eps", "id2label")
CALIBRATION_BATCHES = 2
CALIBRATION_SHAPE = (2, 128)
CALIBRATION_SEED = 1234


def _calibration_batches(config) -> list[dict]:
    """Random token batches like the workload's inputs (a different seed), to set static activation scales."""
    generator = torch.Generator().manual_seed(CALIBRATION_SEED)
    batch, length = CALIBRATION_SHAPE
    length = min(length, config.max_position_embeddings - 2)
    return [random_token_ids(config, batch, length, generator) for _ in range(CALIBRATION_BATCHES)]


def build_ibert(fp32_dir: Path, out_dir: Path) -> None:
    model = load_float32(fp32_dir)
    quantize_model(model, Int8Config(scheme="ibert"), calibration_data=_calibration_batches(model.config))
    model.save_pretrained(out_dir)


def load_ibert_eager(directory: Path):
    return compile_integer_layers(load_int8(directory), enabled=False)


def load_float32_compiled(directory: Path):
    return torch.compile(load_float32(directory))


def build_ibert_simulation(fp32_dir: Path, out_dir: Path) -> None:
    """transformers' quant_mode=True I-BERT with the fp32 RoBERTa's weights, its QuantAct ranges calibrated."""
    if model_class(fp32_dir) is not RobertaForSequenceClassification:
        raise ValueError(f"the ibert-simulation variant is built from a RobertaForSequenceClassification; {fp32_dir} is not one.")
    fp32 = load_float32(fp32_dir)
    shared = {key: getattr(fp32.config, key) for key in _SHARED_CONFIG}
    simulation = IBertForSequenceClassification(
        IBertConfig(**shared, quant_mode=True, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    )
    weights = {name.replace("roberta.", "ibert.", 1): tensor for name, tensor in fp32.state_dict().items()}
    unexpected = simulation.load_state_dict(weights, strict=False).unexpected_keys
    if unexpected:
        raise ValueError(f"RoBERTa tensors I-BERT has no place for: {unexpected[:4]}")
    simulation.train()  # QuantAct modules record their ranges in training mode only
    with torch.no_grad():
        for batch in _calibration_batches(fp32.config):
            simulation(**batch)
    simulation.eval().save_pretrained(out_dir)


register_variant(Variant("ibert", "ibert integer-only", "optimum-int8 ibert scheme: integer-only encoder as loaded "
                         "(native integer kernels, loaded by the first call)", build_ibert, load_int8))
register_variant(Variant("ibert-eager", "ibert eager", "the ibert checkpoint on the eager reference ops "
                         "(compile_integer_layers(model, enabled=False))", build_ibert, load_ibert_eager))
register_variant(Variant("fp32-compiled", "torch fp32 compiled", "the fp32 model after torch.compile", None,
                         load_float32_compiled))
register_variant(Variant("ibert-simulation", "transformers I-BERT sim", "transformers' IBert with quant_mode=True "
                         "(float simulation of integer arithmetic), same weights", build_ibert_simulation, load_float32))

register_workload(Workload(
    "forward",
    lambda s: f"forward {s['batch']}x{s['length']}",
    dict(batch=8, length=128),
    is_encoder_only,
    lambda config, s, generator: random_token_ids(config, s["batch"], s["length"], generator),
    lambda model, inputs, sizes: model(**inputs),
))
register_workload(cold_first_call_workload(WORKLOADS["forward"], "first-forward"))

register_preset(ModelPreset(
    "roberta-base",
    "RoBERTa-base shapes (12 layers, hidden 768, 12 heads, FFN 3072, vocab 50265), sequence classifier, random weights",
    lambda: RobertaForSequenceClassification(RobertaConfig(**ROBERTA_BASE_SHAPE)),
))
register_preset(ModelPreset(
    "bert-base",
    "BERT-base shapes (12 layers, hidden 768, 12 heads, FFN 3072, vocab 30522), sequence classifier, random weights",
    lambda: BertForSequenceClassification(BertConfig(**BERT_BASE_SHAPE)),
))
register_preset(ModelPreset(
    "roberta-tiny",
    "a 2-layer RoBERTa classifier with hidden size 32, for tests",
    lambda: RobertaForSequenceClassification(RobertaConfig(
        **{**ROBERTA_BASE_SHAPE, "vocab_size": 1000, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
           "intermediate_size": 64, "max_position_embeddings": 130}
    )),
    sizes={"forward": dict(batch=2, length=32), "first-forward": dict(batch=2, length=32)},
))
