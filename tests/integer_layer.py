"""A seeded one-layer BERT and its encoder layer as an ``IntegerEncoderLayer``, for the integer-only tests."""

import torch
from transformers import BertConfig, BertModel

from optimum_int8.ibert import calibrate
from optimum_int8.nn.integer_layers import IntegerEncoderLayer, IntegerLayerNorm, IntegerLinear

VOCAB = 99


def integer_bert_layer(hidden: int, heads: int, ffn: int, batches: int) -> tuple[BertModel, IntegerEncoderLayer, dict, list]:
    """The float model, its layer 0 with int8 weights (not yet prepared), the activation scales calibrated on
    ``batches`` random token batches of 4 x 16, and those batches."""
    config = BertConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=1, num_attention_heads=heads,
                        intermediate_size=ffn, max_position_embeddings=64)
    torch.manual_seed(0)
    model = BertModel(config).eval()
    generator = torch.Generator().manual_seed(1)
    calibration = [{"input_ids": torch.randint(4, VOCAB, (4, 16), generator=generator)} for _ in range(batches)]
    scales = calibrate(model, calibration)
    float_layer = model.encoder.layer[0]
    layer_scales = {name: scales[f"encoder.layer.0.{name}"] for name in IntegerEncoderLayer.scaled_modules}
    layer = IntegerEncoderLayer(hidden, heads, ffn, layer_scales, device="meta")
    for name, leaf in list(layer.named_modules()):
        source = float_layer.get_submodule(name)
        if isinstance(leaf, IntegerLinear):
            layer.set_submodule(name, IntegerLinear.from_float(source.weight, source.bias))
        elif isinstance(leaf, IntegerLayerNorm):
            layer.set_submodule(name, IntegerLayerNorm.from_float(source))
    return model, layer, scales, calibration
