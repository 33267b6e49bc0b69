"""Int8StaticActivationLinear with calibrated output qparams computes exactly torch.ao's quantize / static Linear /
dequantize chain (what FX-quantized legacy INC models ran), on fbgemm only, and saves and reloads bit-exact."""

import warnings

import pytest
import torch
from torch.ao.nn.quantized import Linear as AoStaticLinear

from optimum_int8.nn import Int8StaticActivationLinear, kernels

INPUT_QPARAMS, OUTPUT_QPARAMS = (0.021, 131), (0.047, 119)


def _requantized_layer(weight_int8, scale, bias) -> Int8StaticActivationLinear:
    module = Int8StaticActivationLinear(weight_int8.shape[1], weight_int8.shape[0], requantized=True)
    module.load_state_dict({
        "weight_int8": weight_int8, "weight_scale": scale, "bias": bias,
        "input_scale": torch.tensor([INPUT_QPARAMS[0]]), "input_zero_point": torch.tensor([INPUT_QPARAMS[1]], dtype=torch.int32),
        "output_scale": torch.tensor([OUTPUT_QPARAMS[0]]), "output_zero_point": torch.tensor([OUTPUT_QPARAMS[1]], dtype=torch.int32),
    })
    module.pack()
    return module


@pytest.fixture
def weights():
    torch.manual_seed(0)
    weight, bias = torch.randn(24, 40), torch.randn(24)
    scale = weight.abs().amax(dim=1) / 127
    return torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8), scale, bias


def test_output_requantization_matches_torch_ao_static_linear_between_quantize_and_dequantize(weights):
    weight_int8, scale, bias = weights
    module = _requantized_layer(weight_int8, scale, bias)
    assert module.kernel_plan.backend == "fbgemm" and module.kernel_plan.activations == kernels.dispatch.STATIC_REQUANTIZED
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = AoStaticLinear(40, 24)
        qweight = torch._make_per_channel_quantized_tensor(weight_int8, scale.double(), torch.zeros(24, dtype=torch.long), 0)
        reference.set_weight_bias(qweight, bias)
        reference.scale, reference.zero_point = float(torch.tensor(OUTPUT_QPARAMS[0])), OUTPUT_QPARAMS[1]
        for _ in range(5):
            x = torch.randn(2, 7, 40) * 2
            qx = torch.quantize_per_tensor(x, torch.tensor(INPUT_QPARAMS[0]), torch.tensor(INPUT_QPARAMS[1]), torch.quint8)
            assert torch.equal(module(x), reference(qx).dequantize())


def test_output_qparams_are_saved_and_reload_bit_exact(weights):
    module = _requantized_layer(*weights)
    state = module.state_dict()
    assert set(state) == {"weight_int8", "weight_scale", "bias", "input_scale", "input_zero_point", "output_scale",
                          "output_zero_point"}
    assert set(module.layout()) == set(state) and "output requantized" in repr(module)
    reloaded = Int8StaticActivationLinear(40, 24, requantized=True)
    reloaded.load_state_dict(state)
    reloaded.pack()
    x = torch.randn(3, 40)
    assert torch.equal(reloaded(x), module(x))
    assert "output_scale" not in Int8StaticActivationLinear(40, 24).layout()


def test_no_other_kernel_than_fbgemm_requantizes_outputs():
    requantized = kernels.dispatch.STATIC_REQUANTIZED
    assert [backend for backend in kernels.BACKENDS if kernels.dispatch.supports(backend, requantized)] == ["fbgemm"]
