"""StaticInt8Linear computes exactly the quantize / torch.ao static Linear / dequantize chain and refuses to be saved."""

import warnings

import pytest
import torch
from torch.ao.nn.quantized import Linear as AoStaticLinear

from optimum_int8.nn import StaticInt8Linear


def test_matches_torch_ao_static_linear_between_quantize_and_dequantize():
    torch.manual_seed(0)
    weight, bias = torch.randn(24, 40), torch.randn(24)
    scale = weight.abs().amax(dim=1) / 127
    weight_int8 = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
    input_scale, input_zero_point, output_scale, output_zero_point = 0.021, 131, 0.047, 119
    module = StaticInt8Linear.from_int8(weight_int8, scale, bias, input_scale, input_zero_point, output_scale, output_zero_point)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = AoStaticLinear(40, 24)
        qweight = torch._make_per_channel_quantized_tensor(weight_int8, scale.double(), torch.zeros(24, dtype=torch.long), 0)
        reference.set_weight_bias(qweight, bias)
        reference.scale, reference.zero_point = output_scale, output_zero_point
        for _ in range(5):
            x = torch.randn(2, 7, 40) * 2
            qx = torch.quantize_per_tensor(x, torch.tensor(input_scale), torch.tensor(input_zero_point), torch.quint8)
            assert torch.equal(module(x), reference(qx).dequantize())

    weight_back, scale_back, bias_back = module.int8_weights()
    assert torch.equal(weight_back, weight_int8) and torch.equal(scale_back, scale) and torch.equal(bias_back, bias)
    with pytest.raises(RuntimeError, match="stores dynamic int8 only"):
        module.state_dict()
