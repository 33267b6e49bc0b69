import torch

from optimum_int8.nn import kernels


def test_kernels_are_available_on_this_torch():
    kernels.check_available()


def test_pack_unpack_round_trip_is_exact():
    generator = torch.Generator().manual_seed(0)
    weight_int8 = torch.randint(-127, 128, (48, 40), generator=generator, dtype=torch.int8)
    weight_scale = torch.rand(48, generator=generator) / 100
    packed = kernels.pack(weight_int8, weight_scale, torch.randn(48, generator=generator))
    unpacked_int8, unpacked_scale = kernels.unpack(packed)
    assert torch.equal(unpacked_int8, weight_int8)
    assert unpacked_scale.dtype == torch.float32
    assert torch.equal(unpacked_scale, weight_scale)


def test_linear_matches_float_reference_within_activation_rounding():
    generator = torch.Generator().manual_seed(1)
    weight_int8 = torch.randint(-127, 128, (16, 64), generator=generator, dtype=torch.int8)
    weight_scale = torch.full((16,), 0.01)
    bias = torch.randn(16, generator=generator)
    x = torch.randn(5, 64, generator=generator)
    weight = weight_int8.float() * weight_scale[:, None]
    output = kernels.linear(x, kernels.pack(weight_int8, weight_scale, bias))
    # Activations are quantized per tensor to 7 bits (reduce_range): step = range / 127.
    step = (x.max() - min(x.min(), 0)) / 127
    bound = step / 2 * weight.abs().sum(dim=1) + 1e-4
    assert (output - torch.nn.functional.linear(x, weight, bias)).abs().le(bound).all()
