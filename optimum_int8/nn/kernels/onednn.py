"""oneDNN's int8 GEMM (``torch.ops.onednn.qlinear_pointwise``, the op torch's x86 inductor backend emits):
the kernel for prefill-shaped inputs, on AMX tiles where the CPU has them and on AVX-512 VNNI otherwise.

The weight is reordered once into oneDNN's blocked layout. Each call quantizes the activation per tensor to
uint8 (asymmetric, the same scheme as fbgemm's dynamic Linear; ``activation_quantization``), and the kernel writes
its result directly in the compute dtype (bf16 or fp32) with the bias added, so no fp32 output is written
and cast when the model computes in bf16. Inside a compiled graph every call is one custom op (``_opaque_gemm``).
The integer-only (I-BERT) layers use the same kernel with unit scales for exact integer products
(``integer_product``).
"""

import dataclasses

import torch

from . import activation_quantization, compiled_fusions

name = "onednn"


@dataclasses.dataclass(frozen=True)
class OnednnWeight:
    weight: torch.Tensor  # oneDNN tensor, the [in, out] int8 weight in the kernel's layout
    weight_scale: torch.Tensor  # fp32 [out]
    weight_zero_point: torch.Tensor  # zeros, int64 [out] (symmetric weights)
    bias: torch.Tensor | None  # fp32 [out]
    scaled_weight_sums: torch.Tensor  # fp32 [out]: weight_scale * sum of each row's codes (per-token zero points)


def unavailable_reason(capabilities) -> str | None:
    if not hasattr(torch.ops.onednn, "qlinear_pointwise"):
        return f"torch {torch.__version__} has no torch.ops.onednn.qlinear_pointwise"
    if not torch.backends.mkldnn.is_available():
        return f"torch {torch.__version__} was built without oneDNN"
    if not capabilities.avx512_vnni:
        return "oneDNN's int8 GEMM is fast only with AVX-512 VNNI or AMX"
    return None


def pack(weight_int8: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None) -> OnednnWeight:
    return OnednnWeight(
        torch.ops.onednn.qlinear_prepack(weight_int8.contiguous(), None),
        weight_scale.to(torch.float32).contiguous(),
        torch.zeros(weight_scale.shape, dtype=torch.long),
        None if bias is None else bias.detach().to(torch.float32),
        weight_int8.sum(dim=1, dtype=torch.int64).to(torch.float64).mul(weight_scale.double()).float(),
    )


def _gemm(codes, scale: float, zero_point: int, weight, weight_scale, weight_zero_point, bias, out_dtype) -> torch.Tensor:
    """``(codes - zero_point) * scale @ (W * weight_scale).T + bias`` in ``out_dtype``, as one oneDNN call."""
    if torch.compiler.is_compiling():
        return _opaque_gemm(codes, scale, zero_point, weight, weight_scale, weight_zero_point, bias, out_dtype)
    return torch.ops.onednn.qlinear_pointwise(
        codes, scale, zero_point, weight, weight_scale, weight_zero_point, bias, 1.0, 0, out_dtype, "none", [], "",
    )


# Inside a compiled graph the GEMM is this custom op: inductor's own lowering of qlinear_pointwise takes the packed
# weight only as a frozen constant, while ours is an attribute of the module; as an opaque op it stays one extern
# call, and inductor fuses the quantization and the float or integer arithmetic around it.
# ``unary``/``algorithm``: an activation oneDNN applies to the fp32 result before writing it, which
# ``compiled_fusions`` sets where the compiled graph applies one right after the GEMM.
@torch.library.custom_op("optimum_int8::onednn_qlinear", mutates_args=())
def _opaque_gemm(codes: torch.Tensor, scale: float, zero_point: int, weight: torch.Tensor, weight_scale: torch.Tensor,
                 weight_zero_point: torch.Tensor, bias: torch.Tensor | None, out_dtype: torch.dtype,
                 unary: str = "none", algorithm: str = "") -> torch.Tensor:
    return torch.ops.onednn.qlinear_pointwise(
        codes, scale, zero_point, weight, weight_scale, weight_zero_point, bias, 1.0, 0, out_dtype, unary, [], algorithm,
    )


@_opaque_gemm.register_fake
def _(codes, scale, zero_point, weight, weight_scale, weight_zero_point, bias, out_dtype, unary="none", algorithm=""):
    compiled_fusions.register()  # the op is being traced: inductor may compile the graph next
    return codes.new_empty((codes.shape[0], weight_scale.shape[0]), dtype=out_dtype)


def unpack(packed: OnednnWeight) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight_int8, fp32 weight_scale), exactly as packed (oneDNN holds the weight transposed)."""
    return packed.weight.to_dense().t().contiguous(), packed.weight_scale.clone()


def linear(x: torch.Tensor, packed: OnednnWeight, reduce_range: bool, out_dtype: torch.dtype) -> torch.Tensor:
    codes, scale, zero_point = activation_quantization.quantize(x, 127 if reduce_range else 255)
    return _gemm(codes, scale, zero_point, packed.weight, packed.weight_scale, packed.weight_zero_point, packed.bias,
                 out_dtype)


# The per-token GEMM writes fp32 (its zero-point correction would cancel catastrophically in bf16), in blocks of rows
# of at most this many bytes: glibc serves blocks below its mmap threshold (at most 32 MiB) from the heap once one
# was freed, where a whole prefill-sized output (2048 x 4096 x 4 bytes) is mmap'd and page-faulted on every call,
# which cost 4x the GEMM itself (AMX CPU, 2 threads).
_FP32_BLOCK_BYTES = 8 * 2**20


def linear_per_token(x: torch.Tensor, packed: OnednnWeight, out_dtype: torch.dtype,
                     input_multiplier: torch.Tensor | None = None) -> torch.Tensor:
    """``x * input_multiplier @ W.T + b`` with one activation scale and zero point per row (token). The GEMM runs on
    the raw codes (zero point 0, scale 1); each row's zero point is then taken out with the weight's column sums,
    and its scale applied with the bias: ``y = s_r * (W_s q_r - z_r * W_s 1) + b``. The integer GEMM is exact, so blocks
    of rows give the same results as one call."""
    codes, row_scales, zero_points = activation_quantization.quantize_per_row(x, input_multiplier)
    out_features = packed.scaled_weight_sums.shape[0]
    block = max(1, _FP32_BLOCK_BYTES // (4 * out_features))
    if len(codes) <= block:
        y = _per_token_block(codes, row_scales, zero_points, packed)
        y = y if out_dtype == torch.float32 else y.to(out_dtype)
    else:
        y = torch.empty(len(codes), out_features, dtype=out_dtype)
        for start in range(0, len(codes), block):
            rows = slice(start, start + block)
            y[rows] = _per_token_block(codes[rows], row_scales[rows], zero_points[rows], packed)
    return y.view(*x.shape[:-1], out_features)


def _per_token_block(codes, row_scales, zero_points, packed: OnednnWeight) -> torch.Tensor:
    y = _gemm(codes, 1.0, 0, packed.weight, packed.weight_scale, packed.weight_zero_point, None, torch.float32)
    # In place: each new fp32 temporary is another pass of page faults.
    y.addr_(zero_points, packed.scaled_weight_sums, alpha=-1).mul_(row_scales[:, None])
    return y if packed.bias is None else y.add_(packed.bias)


def linear_static(x: torch.Tensor, packed: OnednnWeight, scale: float, zero_point: int,
                  out_dtype: torch.dtype, input_multiplier: torch.Tensor | None = None) -> torch.Tensor:
    """``x * input_multiplier @ W.T + b`` with the activation quantized by a calibrated per-tensor scale and zero
    point; the multiplication happens inside the quantization's blocks (in a compiled graph, inside the kernel that
    produces ``x``)."""
    if torch.compiler.is_compiling():
        codes = activation_quantization.quantize_traceable(x, scale, zero_point, input_multiplier)
    else:
        codes = activation_quantization.quantize_with(x, scale, zero_point, input_multiplier)
    y = _gemm(codes.reshape(-1, x.shape[-1]), scale, zero_point, packed.weight, packed.weight_scale,
              packed.weight_zero_point, packed.bias, out_dtype)
    return y.view(*x.shape[:-1], y.shape[-1])


# Integer products for the integer-only (I-BERT) layers: unit scales, so the fp32 output is the int32 sums.
INTEGER_ZERO_POINT = 128


def pack_integer(weight_int8: torch.Tensor) -> OnednnWeight:
    """``weight_int8`` [out, in] packed with unit scales, for ``integer_product``."""
    return pack(weight_int8, torch.ones(weight_int8.shape[0]), None)


def integer_product(codes: torch.Tensor, packed: OnednnWeight) -> torch.Tensor:
    """``codes @ W.T`` of int8 ``codes`` [M, in] as fp32 holding the exact int32 sums, for a weight packed by
    ``pack_integer``: exact wherever every sum stays below 2**24 in magnitude (the caller's check). The codes go in as
    uint8 with zero point 128, the activation type oneDNN takes on VNNI and AMX alike: ``code + 128`` is the code's
    bit pattern with the top bit flipped (one pass, which inductor vectorizes; a detour through int16 it does not)."""
    shifted = codes.view(torch.uint8) ^ INTEGER_ZERO_POINT
    return _gemm(shifted, 1.0, INTEGER_ZERO_POINT, packed.weight, packed.weight_scale, packed.weight_zero_point, None,
                 torch.float32)
