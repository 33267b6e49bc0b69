"""The CPU kernels of the dynamic int8 scheme, bf16 fallbacks and legacy torch.ao modules.

With ``integer_kernels`` (the integer-only I-BERT scheme) it is the only code that calls CPU kernels.

Int8 layers run on torch's x86/fbgemm dynamic int8 GEMM (the kernel behind ``torch.ao``'s dynamic quantized
Linear): weights are prepacked once, activations are quantized per call to uint8 with a per-tensor
scale. On AVX2-only CPUs the ``vpmaddubsw`` instruction can saturate int16 partial sums, so weights are
packed with ``reduce_range=True`` (7-bit activations), exactly as ``torch.ao`` does on x86.

torch 2.13 deprecates ``torch.ao`` eager quantization; docs/kernels.md says what replaces these calls
when the ops go. bf16 fallback modules run on oneDNN's bf16 GEMM with prepacked weights (``bf16_linear``). Legacy INC checkpoints
also need ``torch.ao``'s uint8 embedding lookup and its static int8 Linear (``nn.Int8Embedding``,
``nn.StaticInt8Linear``). Nothing else in the package calls ``torch.ops.quantized`` directly.
"""

import warnings

import torch

REDUCE_RANGE = True
_SUPPORTED_ENGINES = ("x86", "fbgemm")


class KernelUnavailableError(RuntimeError):
    """The CPU int8 kernels are missing from this torch build."""


def check_available() -> None:
    """Raise a KernelUnavailableError if torch cannot run the x86/fbgemm dynamic int8 kernels."""
    engines = torch.backends.quantized.supported_engines
    if not any(engine in engines for engine in _SUPPORTED_ENGINES):
        raise KernelUnavailableError(
            f"torch {torch.__version__} has no x86/fbgemm quantized engine (supported: {engines}). "
            "optimum-int8 runs its int8 layers on x86 CPUs with a standard torch CPU build; "
            "install one with `pip install torch==2.13.0`."
        )
    if not hasattr(torch.ops.quantized, "linear_dynamic"):
        raise KernelUnavailableError(
            f"torch {torch.__version__} lacks torch.ops.quantized.linear_dynamic; "
            "optimum-int8 supports torch>=2.6,<2.14."
        )


def _quantized_weight(weight_int8: torch.Tensor, weight_scale: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch._make_per_channel_quantized_tensor(
            weight_int8, weight_scale.double(), torch.zeros_like(weight_scale, dtype=torch.long), 0
        )


def pack(weight_int8: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None):
    """Prepack an int8 [out, in] weight with per-output-channel fp32 scales for ``linear``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ops.quantized.linear_prepack(_quantized_weight(weight_int8, weight_scale), bias)


def unpack(packed) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (weight_int8, fp32 weight_scale) from a packed weight; exact inverse of ``pack``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qweight, _ = torch.ops.quantized.linear_unpack(packed)
        return qweight.int_repr(), qweight.q_per_channel_scales().to(torch.float32)


def unpack_bias(packed) -> torch.Tensor | None:
    """The fp32 bias a packed weight carries (None if it has none)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ops.quantized.linear_unpack(packed)[1]


# CPUs with bf16 dot-product instructions (AVX-512 BF16, AMX) run oneDNN's bf16 GEMM natively.
_NATIVE_BF16 = torch.cpu._is_avx512_bf16_supported() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
_AMX_BF16 = torch.cpu._is_amx_tile_supported()
# Without AMX, a bf16 GEMM with at least this many rows runs slower than fp32 (AVX-512 BF16 does as many
# multiply-adds per cycle as fp32 FMA, plus conversions), so it runs in fp32 on an fp32 copy of the weight.
BF16_FP32_MIN_ROWS = 64


class PackedBFloat16Weight:
    """A bf16 [out, in] weight in the layout the bf16 GEMM reads: oneDNN's blocked layout on CPUs with native
    bf16, else the plain tensor. Copies and pickles as the plain tensor (oneDNN tensors have no storage)."""

    def __init__(self, weight: torch.Tensor):
        weight = weight.detach().to(torch.bfloat16)
        self.tensor = torch.ops.mkldnn._reorder_linear_weight(weight, 1) if _NATIVE_BF16 else weight.contiguous().clone()

    def dense(self) -> torch.Tensor:
        """The plain [out, in] bf16 weight, exactly."""
        return self.tensor.to_dense() if self.tensor.is_mkldnn else self.tensor

    def __reduce__(self):
        return type(self), (self.dense(),)


def pack_bf16(weight: torch.Tensor) -> PackedBFloat16Weight:
    """Prepack a bf16 [out, in] weight once, so that ``bf16_linear`` never reorders or casts it per call."""
    return PackedBFloat16Weight(weight)


def bf16_linear(x: torch.Tensor, packed: PackedBFloat16Weight, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ W.T + b`` with ``x`` rounded to bf16, products summed in fp32, the result rounded to bf16 and
    returned in ``x``'s dtype (docs/format.md). Short inputs (decoding) run oneDNN's bf16 GEMM on the prepacked
    weight; tall ones, on CPUs without AMX, run fp32 GEMM on the exactly upcast operands, which is faster there."""
    x_bf16 = x.to(torch.bfloat16)
    rows = x.numel() // x.shape[-1]
    if _NATIVE_BF16 and (_AMX_BF16 or rows < BF16_FP32_MIN_ROWS):
        y = torch.ops.mkldnn._linear_pointwise(x_bf16, packed.tensor, bias, "none", [], "")
    else:
        y = torch.nn.functional.linear(
            x_bf16.float(), packed.dense().float(), bias.float() if bias is not None else None
        ).to(torch.bfloat16)
    return y.to(x.dtype)


def linear(x: torch.Tensor, packed) -> torch.Tensor:
    """fp32 ``x @ W.T + b`` with W int8 and x quantized dynamically (per tensor) inside the kernel."""
    return torch.ops.quantized.linear_dynamic(x, packed, REDUCE_RANGE)


def pack_embedding(weight_uint8: torch.Tensor, row_scale: torch.Tensor, row_zero_point: torch.Tensor):
    """Prepack a uint8 [rows, dim] embedding table with per-row fp32 scales and float zero points.

    The layout of ``torch.ao``'s quantized ``nn.Embedding`` (``per_channel_affine_float_qparams``).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qweight = torch._make_per_channel_quantized_tensor(weight_uint8, row_scale.double(), row_zero_point.float(), 0)
        return torch.ops.quantized.embedding_bag_prepack(qweight)


def embedding(indices: torch.Tensor, packed) -> torch.Tensor:
    """fp32 rows of a packed uint8 table (the kernel needs contiguous indices)."""
    return torch.ops.quantized.embedding_byte(packed, indices.contiguous())


def static_linear(x: torch.Tensor, packed, input_scale: torch.Tensor, input_zero_point: torch.Tensor,
                  output_scale: float, output_zero_point: int) -> torch.Tensor:
    """``torch.ao`` static int8 Linear as FX-quantized graphs ran it: quantize the input with calibrated
    uint8 qparams, int8 GEMM with the output requantized to uint8, then dequantize to fp32."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qx = torch.quantize_per_tensor(x, input_scale, input_zero_point, torch.quint8)
        return torch.ops.quantized.linear(qx, packed, output_scale, output_zero_point).dequantize()
