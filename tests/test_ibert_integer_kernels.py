"""The integer matrix products (nn/integer_kernels.py) are exact int32 arithmetic."""

import pytest
import torch

from optimum_int8.nn import integer_kernels


def test_int8_linear_is_the_exact_int32_product():
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(-128, 128, (24, 64), generator=generator, dtype=torch.int8)
    weight = torch.randint(-127, 128, (48, 64), generator=generator, dtype=torch.int8)
    out = integer_kernels.int8_linear(x, weight.t().contiguous())
    assert out.dtype == torch.int32
    assert torch.equal(out, x.int() @ weight.int().t())


def test_integer_bmm_is_exact_at_its_bound():
    # P.V at the limit: 512 keys, probabilities up to 256, values down to -128: the sum reaches 2**24 exactly.
    probabilities = torch.full((2, 3, 4, 512), 256, dtype=torch.int16)
    values = torch.full((2, 3, 512, 8), -128, dtype=torch.int8)
    values[..., 1:, 1] = 127
    out = integer_kernels.integer_bmm(probabilities, values)
    expected = probabilities.long() @ values.long()
    assert out.dtype == torch.int32
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
