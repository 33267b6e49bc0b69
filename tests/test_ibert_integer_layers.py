"""Integer-only modules (nn/integer_layers.py): int8 storage, prepared layouts, and a layer against its float twin."""

import pytest
import torch

from optimum_int8.nn import Int8DynamicLinear
from optimum_int8.nn.kernels.capabilities import CpuCapabilities, overridden
from optimum_int8.nn.integer_layers import (
    IntegerEmbedding,
    IntegerLayerNorm,
    IntegerLinear,
    IntegerSelfAttention,
    packed_weights,
)
from integer_layer import integer_bert_layer


def _linear(out_features=24, in_features=16, seed=0) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(in_features, out_features)


def test_integer_linear_stores_the_dynamic_int8_codes_and_multiplies_exactly():
    float_linear = _linear()
    linear = IntegerLinear.from_float(float_linear.weight, float_linear.bias)
    reference = Int8DynamicLinear.from_weight(float_linear.weight, float_linear.bias)
    assert torch.equal(linear.weight_int8, reference.weight_int8)
    assert torch.equal(linear.weight_scale, reference.weight_scale)
    linear.prepare()
    assert linear.weight_int8 is None  # moved into the packed weight: one copy in memory
    x = torch.randint(-128, 128, (2, 5, 16), dtype=torch.int8)
    assert torch.equal(linear(x), (x.int() @ reference.weight_int8.int().t()))
    state = linear.state_dict()
    assert state["weight_int8"].is_contiguous()
    assert torch.equal(state["weight_int8"], reference.weight_int8)
    assert set(state) == {"weight_int8", "weight_scale", "bias"}


def test_fused_projection_weights_are_packed_once_and_saved_as_separate_tensors():
    linears = [IntegerLinear.from_float(_linear(seed=s).weight, _linear(seed=s).bias) for s in range(3)]
    codes = [linear.weight_int8.clone() for linear in linears]
    packed = packed_weights(*linears)
    assert packed.transposed_codes().shape == (16, 72)
    for linear, original in zip(linears, codes):
        assert linear.weight_int8 is None and linear.stored_in[0] is packed
        saved = linear.state_dict()["weight_int8"]
        assert saved.is_contiguous() and torch.equal(saved, original)
    with overridden(CpuCapabilities(avx2=True)):  # torch._int_mm's plain layout: the same codes come back
        plain = [IntegerLinear.from_float(_linear(seed=s).weight, _linear(seed=s).bias) for s in range(3)]
        assert packed_weights(*plain).kernel == "torch._int_mm"
    for linear, original in zip(plain, codes):
        assert torch.equal(linear.state_dict()["weight_int8"], original)


def test_integer_embedding_is_symmetric_per_tensor():
    torch.manual_seed(0)
    weight = torch.randn(10, 8)
    embedding = IntegerEmbedding.from_float(weight)
    assert embedding.weight_scale.shape == (1,)
    assert embedding.weight_int8.abs().max() == 127
    ids = torch.tensor([[0, 3, 9]])
    assert torch.equal(embedding(ids), embedding.weight_int8[ids])
    assert (embedding.weight_int8.float() * embedding.weight_scale - weight).abs().max() <= embedding.weight_scale / 2 + 1e-7


def test_integer_layer_norm_matches_float_layer_norm():
    torch.manual_seed(0)
    float_norm = torch.nn.LayerNorm(32)
    torch.nn.init.normal_(float_norm.weight, 1.0, 0.2)
    torch.nn.init.normal_(float_norm.bias, 0.0, 0.2)
    norm = IntegerLayerNorm.from_float(float_norm)
    norm.prepare(output_scale=0.03)
    x = torch.randint(-(2**21), 2**21, (6, 32), dtype=torch.int32)
    out = norm(x)
    expected = torch.round(float_norm(x.float()).detach() / 0.03).clamp(-128, 127)
    assert out.dtype == torch.int8
    assert (out.float() - expected).abs().max() <= 1


def test_activation_scales_are_checked_against_the_points_a_module_needs():
    with pytest.raises(ValueError, match="needs activation scales"):
        IntegerSelfAttention(16, 2, {"query": 1.0}, device="meta")
    scales = dict.fromkeys(IntegerSelfAttention.scale_bits, 0.1) | {"exp": float("nan")}
    with pytest.raises(ValueError, match="positive finite"):
        IntegerSelfAttention(16, 2, scales, device="meta")


def test_integer_encoder_layer_tracks_the_float_layer():
    model, layer, scales, batches = integer_bert_layer(64, 4, 128, batches=4)
    float_layer = model.encoder.layer[0]
    input_scale = scales["embeddings"]["output"]
    output_scale = layer.prepare(input_scale)
    with torch.no_grad():
        hidden = model.embeddings(input_ids=batches[0]["input_ids"])
        codes = torch.round(hidden / input_scale).clamp(-128, 127).to(torch.int8)
        out = layer(codes, None).float() * output_scale
        expected = float_layer(codes.float() * input_scale)
    assert out.shape == expected.shape
    cosine = torch.nn.functional.cosine_similarity(out.flatten(1), expected.flatten(1))
    assert cosine.min() > 0.99
