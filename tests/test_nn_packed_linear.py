"""What every packed Linear replacement (int8, bf16) guarantees about packing and its state dict."""

import copy
import io

import pytest
import torch
from torch import nn

from optimum_int8 import BFloat16Linear, Int8DynamicLinear

PACKED_CLASSES = [Int8DynamicLinear, BFloat16Linear]


def _linear(seed=0, bias=True):
    torch.manual_seed(seed)
    return nn.Linear(40, 24, bias=bias)


@pytest.mark.parametrize("cls", PACKED_CLASSES)
def test_state_dict_round_trip_is_exact(cls):
    module = cls.from_float(_linear())
    restored = cls(40, 24)
    restored.load_state_dict(module.state_dict())
    restored.pack()
    x = torch.randn(3, 40)
    assert torch.equal(restored(x), module(x))
    packed_copy = cls.from_float(_linear(seed=1))
    packed_copy.load_state_dict(module.state_dict())
    assert packed_copy.is_packed and torch.equal(packed_copy(x), module(x))


@pytest.mark.parametrize("cls", PACKED_CLASSES)
def test_deepcopy_and_torch_save_keep_the_module_working(cls):
    module = cls.from_float(_linear())
    x = torch.randn(2, 40)
    assert torch.equal(copy.deepcopy(module)(x), module(x))
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    buffer.seek(0)
    restored = cls(40, 24)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    restored.pack()
    assert torch.equal(restored(x), module(x))


@pytest.mark.parametrize("cls", PACKED_CLASSES)
def test_unpacked_module_refuses_to_run_and_packing_twice_is_an_error(cls):
    with pytest.raises(RuntimeError, match=f"{cls.__name__} is not packed"):
        cls(8, 4)(torch.randn(1, 8))
    module = cls.from_float(_linear())
    with pytest.raises(RuntimeError, match="already packed"):
        module.pack()


@pytest.mark.parametrize("cls", PACKED_CLASSES)
def test_the_bias_is_a_copy_and_its_layout_matches_the_state_dict(cls):
    linear = _linear()
    module = cls.from_float(linear)
    assert module.bias.data_ptr() != linear.bias.data_ptr() and module.bias.dtype == cls.bias_dtype
    layout = cls.state_dict_layout(24, 40, has_bias=True)
    assert {name: (t.dtype, tuple(t.shape)) for name, t in module.state_dict().items()} == layout
    assert "bias" not in cls.state_dict_layout(24, 40, has_bias=False)
    assert set(cls.from_float(_linear(bias=False)).state_dict()) == set(cls.weight_layout(24, 40))
