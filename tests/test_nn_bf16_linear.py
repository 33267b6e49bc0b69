import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from optimum_int8 import BFloat16Linear
from optimum_int8.nn import kernels


def _linear(in_features=24, out_features=16, bias=True, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(in_features, out_features, bias=bias)


def _reference(x, linear):
    """The documented computation: bf16-rounded operands, exact products, the result rounded to bf16."""
    bias = linear.bias.bfloat16().double() if linear.bias is not None else 0
    exact = x.bfloat16().double() @ linear.weight.bfloat16().double().T + bias
    return exact.bfloat16().float()


@pytest.mark.parametrize("rows", [1, 3, kernels.BF16_FP32_MIN_ROWS + 6])
def test_output_is_the_bf16_product_returned_in_the_input_dtype(rows):
    """Short inputs run the prepacked bf16 GEMM, tall ones fp32 on the upcast weight: both compute the same."""
    linear = _linear(in_features=96, out_features=40)
    module = BFloat16Linear.from_float(linear)
    x = torch.randn(rows, 96)
    output = module(x)
    assert output.dtype == torch.float32
    # Summation order may flip the final bf16 rounding by one step (2**-8 relative).
    assert torch.allclose(output, _reference(x, linear), rtol=2**-7, atol=1e-3)
    assert torch.allclose(output, linear(x), atol=0.05, rtol=0.02)
    assert module(x.bfloat16()).dtype == torch.bfloat16


def test_three_dimensional_inputs_keep_their_shape():
    module = BFloat16Linear.from_float(_linear())
    x = torch.randn(2, 5, 24)
    assert module(x).shape == (2, 5, 16)
    assert torch.equal(module(x)[1], module(x[1]))


def test_weights_are_converted_once_and_only_the_packed_copy_is_kept():
    linear = _linear()
    module = BFloat16Linear.from_float(linear)
    assert module.is_packed and [name for name, _ in module.named_parameters()] == ["bias"]
    assert module.weight_bf16.dtype == torch.bfloat16 and tuple(module.weight_bf16.shape) == (16, 24)
    assert module.weight is module.weight_bf16
    state = module.state_dict()
    assert set(state) == {"weight_bf16", "bias"}
    assert torch.equal(state["weight_bf16"], linear.weight.detach().bfloat16())
    layout = BFloat16Linear.state_dict_layout(16, 24, True)
    assert {name: (t.dtype, tuple(t.shape)) for name, t in state.items()} == layout


def test_conv1d_is_converted_in_linear_orientation():
    torch.manual_seed(0)
    conv = Conv1D(16, 24)
    nn.init.normal_(conv.bias)
    module = BFloat16Linear.from_float(conv)
    assert module.state_dict()["weight_bf16"].shape == (16, 24)
    x = torch.randn(2, 24)
    assert torch.allclose(module(x), conv(x), atol=0.05, rtol=0.02)


def test_a_module_without_bias_has_no_bias_tensor():
    module = BFloat16Linear.from_float(_linear(bias=False))
    assert module.bias is None and set(module.state_dict()) == {"weight_bf16"}
    assert module(torch.randn(2, 24)).shape == (2, 16)
