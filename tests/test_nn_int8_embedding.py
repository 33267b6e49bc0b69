"""Int8Embedding computes exactly what torch.ao's quantized Embedding computes, and saves as exact fp32 rows."""

import warnings

import torch
from torch import nn
from torch.ao.nn.quantized import Embedding as AoQuantizedEmbedding
from torch.ao.quantization import float_qparams_weight_only_qconfig, quantize_dynamic

from optimum_int8.nn import Int8Embedding


def ao_embedding(seed: int = 0) -> AoQuantizedEmbedding:
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = quantize_dynamic(nn.Sequential(nn.Embedding(50, 16)), {nn.Embedding: float_qparams_weight_only_qconfig})
    return quantized[0]


def int8_of(reference: AoQuantizedEmbedding, embed_scale=None) -> Int8Embedding:
    weight = reference.weight()
    return Int8Embedding.from_uint8(weight.int_repr(), weight.q_per_channel_scales().float(),
                                    weight.q_per_channel_zero_points().float(), embed_scale)


def test_lookup_matches_torch_ao_bit_for_bit_also_for_strided_indices():
    reference = ao_embedding()
    module = int8_of(reference)
    indices = torch.arange(50).expand(3, -1)[:, 5:17]  # a non-contiguous view, like BERT's position_ids slice
    assert torch.equal(module(indices), reference(indices.contiguous()))
    assert torch.equal(int8_of(reference, embed_scale=4.0)(indices), reference(indices.contiguous()) * 4.0)


def test_dequantized_weight_is_what_the_kernel_looks_up_not_the_tensor_dequantize():
    reference = ao_embedding(1)
    module = int8_of(reference)
    table = module.dequantized_weight()
    assert torch.equal(table, reference(torch.arange(50)))
    assert torch.equal(nn.functional.embedding(torch.tensor([[3, 7]]), table), module(torch.tensor([[3, 7]])))


def test_state_dict_holds_fp32_rows_once_per_module_object():
    shared = int8_of(ao_embedding(2))
    container = nn.Module()
    container.shared, container.encoder_tokens = shared, shared
    state_dict = container.state_dict(keep_vars=True)
    assert set(state_dict) == {"shared.weight", "encoder_tokens.weight"}
    assert state_dict["shared.weight"] is state_dict["encoder_tokens.weight"]
    assert state_dict["shared.weight"].dtype == torch.float32
    assert torch.equal(state_dict["shared.weight"], shared.dequantized_weight())
