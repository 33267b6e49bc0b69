import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from optimum_int8 import BFloat16Linear


def _linear(bias=True, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(24, 16, bias=bias)


def test_output_is_the_bf16_product_returned_in_the_input_dtype():
    linear = _linear()
    module = BFloat16Linear.from_float(linear)
    x = torch.randn(3, 5, 24)
    expected = torch.nn.functional.linear(x.bfloat16(), linear.weight.bfloat16(), linear.bias.bfloat16()).float()
    output = module(x)
    assert output.dtype == torch.float32
    assert torch.equal(output, expected)
    assert torch.allclose(output, linear(x), atol=0.05, rtol=0.02)
    assert module(x.bfloat16()).dtype == torch.bfloat16


def test_weights_are_converted_once_and_stored_in_bf16():
    module = BFloat16Linear.from_float(_linear())
    state = module.state_dict()
    assert set(state) == {"weight_bf16", "bias"}
    assert all(tensor.dtype == torch.bfloat16 for tensor in state.values())
    assert module.weight is module.weight_bf16
    layout = BFloat16Linear.state_dict_layout(16, 24, True)
    assert {name: (t.dtype, tuple(t.shape)) for name, t in state.items()} == layout


def test_conv1d_is_converted_in_linear_orientation():
    torch.manual_seed(0)
    conv = Conv1D(16, 24)
    nn.init.normal_(conv.bias)
    module = BFloat16Linear.from_float(conv)
    assert module.weight_bf16.shape == (16, 24)
    x = torch.randn(2, 24)
    assert torch.allclose(module(x), conv(x), atol=0.05, rtol=0.02)


def test_a_module_without_bias_has_no_bias_tensor():
    module = BFloat16Linear.from_float(_linear(bias=False))
    assert module.bias is None and set(module.state_dict()) == {"weight_bf16"}


def test_state_dict_round_trip_is_exact():
    source = BFloat16Linear.from_float(_linear())
    target = BFloat16Linear(24, 16)
    target.load_state_dict(source.state_dict())
    x = torch.randn(4, 24)
    assert torch.equal(target(x), source(x))
