import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from optimum_int8 import Int8DynamicLinear


def _linear(in_features=64, out_features=24, bias=True, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(in_features, out_features, bias=bias)


def _activation_bound(x, weight):
    step = (x.max() - min(x.min(), 0)) / 127
    return step / 2 * weight.abs().sum(dim=1) + 1e-5


@pytest.mark.parametrize("bias", [True, False])
def test_output_matches_dequantized_reference(bias):
    linear = _linear(bias=bias)
    qlinear = Int8DynamicLinear.from_float(linear)
    x = torch.randn(3, 7, 64)
    weight = qlinear.weight()
    reference = nn.functional.linear(x, weight, linear.bias)
    assert (qlinear(x) - reference).abs().le(_activation_bound(x, weight)).all()


def test_weights_are_symmetric_per_output_channel():
    linear = _linear()
    qlinear = Int8DynamicLinear.from_float(linear)
    state = qlinear.state_dict()
    assert state["weight_int8"].dtype == torch.int8 and state["weight_int8"].shape == (24, 64)
    assert state["weight_scale"].dtype == torch.float32 and state["weight_scale"].shape == (24,)
    assert torch.equal(state["weight_int8"].abs().amax(dim=1), torch.full((24,), 127, dtype=torch.int8))
    assert torch.allclose(state["weight_scale"], linear.weight.abs().amax(dim=1) / 127)
    assert (qlinear.weight() - linear.weight).abs().le(state["weight_scale"][:, None] / 2 + 1e-7).all()


def test_conv1d_is_quantized_in_linear_orientation():
    torch.manual_seed(0)
    conv = Conv1D(24, 64)
    nn.init.normal_(conv.weight)
    qconv = Int8DynamicLinear.from_float(conv)
    x = torch.randn(4, 64)
    assert qconv.weight().shape == (24, 64)
    assert (qconv(x) - conv(x)).abs().max() < 0.05 * conv(x).abs().max()


def test_state_dict_with_wrong_dtype_is_rejected():
    qlinear = Int8DynamicLinear.from_float(_linear())
    state = qlinear.state_dict()
    state["weight_int8"] = state["weight_int8"].float()
    with pytest.raises(RuntimeError, match="weight_int8: expected torch.int8, got torch.float32"):
        qlinear.load_state_dict(state)


def test_non_finite_weights_are_rejected():
    linear = _linear()
    with torch.no_grad():
        linear.weight[3, 5] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        Int8DynamicLinear.from_float(linear)


def test_subclasses_are_not_silently_quantized():
    class Scaled(nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    with pytest.raises(TypeError, match="expects nn.Linear or Conv1D, got Scaled"):
        Int8DynamicLinear.from_float(Scaled(4, 4))


def test_low_precision_inputs_come_back_in_their_dtype():
    qlinear = Int8DynamicLinear.from_float(_linear())
    x = torch.randn(2, 64)
    assert qlinear(x.bfloat16()).dtype == torch.bfloat16
    assert torch.allclose(qlinear(x.bfloat16()).float(), qlinear(x.bfloat16().float()), atol=0.05)


def test_weight_is_not_a_tensor():
    # T5's feed-forward checks isinstance(wo.weight, torch.Tensor) to pick a dtype.
    qlinear = Int8DynamicLinear.from_float(_linear())
    assert not isinstance(qlinear.weight, torch.Tensor)
