"""The integer matrix products (nn/integer_kernels.py) are exact int32 arithmetic."""

import copy
import io

import pytest
import torch

from optimum_int8.nn import integer_kernels
from optimum_int8.nn.kernels import onednn
from optimum_int8.nn.kernels.capabilities import CpuCapabilities, detect, overridden

ONEDNN_RUNS = onednn.unavailable_reason(detect()) is None
_FP32_EXACT = 2**24


NO_VNNI = CpuCapabilities(avx2=True, avx512=True)


def test_int8_linear_is_the_exact_integer_product_on_either_kernel():
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(-128, 128, (24, 64), generator=generator, dtype=torch.int8)
    weight = torch.randint(-127, 128, (48, 64), generator=generator, dtype=torch.int8)
    packed = integer_kernels.pack(weight.t().contiguous())
    with overridden(NO_VNNI):
        unpacked = integer_kernels.pack(weight.t().contiguous())
    assert (packed.kernel, unpacked.kernel) == ("onednn" if ONEDNN_RUNS else "torch._int_mm", "torch._int_mm")
    for weights in (packed, unpacked):  # fp32 holding the exact sums (oneDNN) or int32 (torch._int_mm)
        out = integer_kernels.int8_linear(x, weights)
        assert out.dtype == (torch.float32 if weights.kernel == "onednn" else torch.int32)
        assert torch.equal(out.long(), x.long() @ weight.long().t())


@pytest.mark.skipif(not ONEDNN_RUNS, reason="oneDNN's int8 GEMM needs AVX-512 VNNI or AMX")
def test_onednn_products_are_exact_up_to_the_bound_and_not_chosen_past_it():
    # 1032 inputs: sums reach 128 * 127 * 1032 = 16,776,192 in magnitude, just below 2**24.
    depth = _FP32_EXACT // (128 * 127)
    x = torch.full((5, depth), -128, dtype=torch.int8)
    x[1] = 127
    weight = torch.full((3, depth), 127, dtype=torch.int8)
    weight[1, ::2] = -127
    packed = integer_kernels.pack(weight.t().contiguous())
    assert packed.kernel == "onednn"
    expected = x.long() @ weight.long().t()
    assert expected.abs().max() == 128 * 127 * depth
    assert torch.equal(integer_kernels.int8_linear(x, packed).long(), expected)
    # One more input: a sum could reach past 2**24, where fp32 rounds, so the exact int32 kernel runs instead.
    wider = torch.full((4, depth + 1), 127, dtype=torch.int8)
    assert not integer_kernels.exact_in_fp32(wider.t())
    assert integer_kernels.pack(wider.t().contiguous()).kernel == "torch._int_mm"


def test_the_fp32_bound_reads_the_weight_not_only_its_depth():
    # 4096 inputs, but small codes: 128 * sum |w| stays below 2**24, so the kernel's fp32 output is still exact.
    weight = torch.zeros(2, 4096, dtype=torch.int8)
    weight[:, :100] = 127
    assert integer_kernels.exact_in_fp32(weight.t())
    weight[0, :1033] = -127
    assert not integer_kernels.exact_in_fp32(weight.t())


def test_integer_bmm_is_exact_at_its_bound():
    # P.V at the limit: 512 keys, probabilities up to 256, values down to -128: the sum reaches 2**24 exactly.
    probabilities = torch.full((2, 3, 4, 512), 256, dtype=torch.int16)
    values = torch.full((2, 3, 512, 8), -128, dtype=torch.int8)
    values[..., 1:, 1] = 127
    out = integer_kernels.integer_bmm(probabilities, values)
    expected = probabilities.long() @ values.long()
    assert out.dtype == torch.float32  # holding the exact integer sums
    assert torch.equal(out.long(), expected)
    assert out.abs().max() == 2**24
    generator = torch.Generator().manual_seed(1)
    query = torch.randint(-128, 128, (4, 16, 64), generator=generator, dtype=torch.int8)
    key = torch.randint(-128, 128, (4, 64, 16), generator=generator, dtype=torch.int8)
    assert torch.equal(integer_kernels.integer_bmm(query, key).long(), query.long() @ key.long())


def test_check_bmm_exact_refuses_products_that_fp32_would_round():
    integer_kernels.check_bmm_exact(512, 256, 128, "context")
    with pytest.raises(ValueError, match="exceeds 2\\*\\*24"):
        integer_kernels.check_bmm_exact(513, 256, 128, "context")


def test_check_available_passes_on_a_cpu_torch_build():
    integer_kernels.check_available()


def test_packed_weights_copy_and_pickle_as_their_codes_on_the_same_kernel():
    generator = torch.Generator().manual_seed(3)
    weight_t = torch.randint(-127, 128, (64, 48), generator=generator, dtype=torch.int8)
    x = torch.randint(-128, 128, (8, 64), generator=generator, dtype=torch.int8)
    packed = [integer_kernels.pack(weight_t.clone())]
    with overridden(NO_VNNI):
        packed.append(integer_kernels.pack(weight_t.clone()))
    for original in packed:
        buffer = io.BytesIO()
        torch.save(original, buffer)
        buffer.seek(0)
        for copy_ in (copy.deepcopy(original), torch.load(buffer, weights_only=False)):
            assert copy_.kernel == original.kernel
            assert torch.equal(copy_.transposed_codes(), weight_t)
            assert torch.equal(integer_kernels.int8_linear(x, copy_), integer_kernels.int8_linear(x, original))
