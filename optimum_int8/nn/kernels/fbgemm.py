"""fbgemm's dynamic int8 Linear (torch's x86 quantized engine): the kernel for decode-shaped inputs.

Weights are prepacked once into fbgemm's layout; each call quantizes the activation per tensor to uint8
inside the kernel (min/max, then one pass), runs the int8 GEMM with int32 sums and returns fp32. Fastest
measured kernel for a few rows (decoding) on every CPU we ran, and the one torch.ao ran for the old INC
stack (legacy checkpoints reproduce it with ``reduce_range=True``).
"""

import warnings

import torch

from . import activation_quantization

name = "fbgemm"
_ENGINES = ("x86", "fbgemm")


def unavailable_reason(capabilities) -> str | None:
    engines = torch.backends.quantized.supported_engines
    if not any(engine in engines for engine in _ENGINES):
        return f"torch {torch.__version__} has no x86/fbgemm quantized engine (supported: {engines})"
    if not hasattr(torch.ops.quantized, "linear_dynamic"):
        return f"torch {torch.__version__} lacks torch.ops.quantized.linear_dynamic"
    if not capabilities.avx2:
        return "fbgemm needs AVX2"
    return None


def _quantized_weight(weight_int8: torch.Tensor, weight_scale: torch.Tensor) -> torch.Tensor:
    return torch._make_per_channel_quantized_tensor(
        weight_int8, weight_scale.double(), torch.zeros_like(weight_scale, dtype=torch.long), 0
    )


def pack(weight_int8: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None):
    """fbgemm's packed weight (the bias travels inside it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ops.quantized.linear_prepack(_quantized_weight(weight_int8.contiguous(), weight_scale), bias)


def unpack(packed) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight_int8, fp32 weight_scale), exactly as packed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qweight, _ = torch.ops.quantized.linear_unpack(packed)
        return qweight.int_repr(), qweight.q_per_channel_scales().to(torch.float32)


def unpack_bias(packed) -> torch.Tensor | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ops.quantized.linear_unpack(packed)[1]


def linear(x: torch.Tensor, packed, reduce_range: bool, out_dtype: torch.dtype) -> torch.Tensor:
    """``x @ W.T + b``: fp32 in and out of the kernel, cast from and to the caller's dtypes."""
    x32 = x if x.dtype == torch.float32 else x.to(torch.float32)
    y = torch.ops.quantized.linear_dynamic(x32, packed, reduce_range)
    return y if out_dtype == torch.float32 else y.to(out_dtype)


def smoothed(x: torch.Tensor, input_multiplier: torch.Tensor | None) -> torch.Tensor:
    """``x * input_multiplier`` (SmoothQuant); fbgemm's kernels quantize inside, so the multiply comes first."""
    return x if input_multiplier is None else x * input_multiplier


def linear_static(x: torch.Tensor, packed, scale: float, zero_point: int, out_dtype: torch.dtype,
                  input_multiplier: torch.Tensor | None = None) -> torch.Tensor:
    """``x * input_multiplier @ W.T + b`` with the activation quantized by a calibrated per-tensor scale and zero
    point."""
    x = smoothed(x, input_multiplier)
    x32 = x if x.dtype == torch.float32 else x.to(torch.float32)
    y = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(x32, scale, zero_point, packed)
    return y if out_dtype == torch.float32 else y.to(out_dtype)


def linear_static_requantized(x: torch.Tensor, packed, scale: float, zero_point: int, output_scale: float,
                              output_zero_point: int, out_dtype: torch.dtype,
                              input_multiplier: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ W.T + b`` as a post-training-static FX graph ran it (legacy INC checkpoints): the activation quantized
    to uint8 with its calibrated scale and zero point, the int8 GEMM's result requantized to uint8 with the calibrated
    output scale and zero point inside the kernel (``quantized::linear``), then dequantized."""
    x = smoothed(x, input_multiplier)
    x32 = x if x.dtype == torch.float32 else x.to(torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qx = torch.quantize_per_tensor(x32, scale, zero_point, torch.quint8)
        y = torch.ops.quantized.linear(qx, packed, output_scale, output_zero_point).dequantize()
    return y if out_dtype == torch.float32 else y.to(out_dtype)


def linear_per_token(x: torch.Tensor, packed, out_dtype: torch.dtype,
                     input_multiplier: torch.Tensor | None = None) -> torch.Tensor:
    """``x * input_multiplier @ W.T + b`` with one activation scale and zero point per row, each row through
    fbgemm's fused static GEMM.

    One call per row, so only fast for a few rows: the dispatch table sends single-row (decode) calls here, where
    it is several times faster than oneDNN's, whose per-call overhead dominates a one-row product."""
    x = smoothed(x, input_multiplier)
    rows = x.reshape(-1, x.shape[-1])
    rows = rows if rows.dtype == torch.float32 else rows.to(torch.float32)
    static = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32
    if len(rows) == 1:
        y = static(rows, *activation_quantization.single_row_qparams(rows), packed)
    else:
        scales, zero_points = activation_quantization.row_qparams(rows)
        y = torch.cat([static(row[None], scale, int(zero_point), packed)
                       for row, scale, zero_point in zip(rows, scales.tolist(), zero_points.tolist())])
    y = y.view(*x.shape[:-1], -1)
    return y if out_dtype == torch.float32 else y.to(out_dtype)

