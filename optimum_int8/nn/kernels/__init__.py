"""The only code that calls CPU kernels (with ``nn.integer_kernels`` for the integer-only I-BERT scheme).

- ``capabilities``: what this CPU can run, the one source every choice reads;
- ``dispatch``: the table of measured kernel choices per CPU and row count, and the ``KernelPlan`` of a layer;
- ``fbgemm``, ``onednn``: the int8 backends, each packing from and unpacking to the same int8 codes and
  fp32 scales, so the file format does not depend on the CPU;
- ``int8_weight``: a layer's packed weight and its call-time dispatch;
- ``weight_only``: the weight-only int8 GEMM (float activations);
- ``bf16``: the bf16 fallbacks' GEMMs; ``torch_ao``: the op only legacy INC checkpoints need;
- ``compiled_fusions``: GELU fused into oneDNN's GEMM in compiled graphs.

docs/kernels.md gives the measurements behind each choice.
"""

from . import capabilities, dispatch, fbgemm, onednn, weight_only
from .bf16 import BF16_FP32_MIN_ROWS, PackedBFloat16Weight, bf16_linear, pack_bf16
from .capabilities import CpuCapabilities
from .dispatch import (
    BACKENDS,
    KERNEL_CHOICES,
    KERNEL_ENV,
    DispatchRule,
    KernelPlan,
    KernelUnavailableError,
    check_available,
    plan,
)
from .int8_weight import PackedInt8Weight
from .torch_ao import embedding, pack_embedding

__all__ = [
    "BACKENDS", "BF16_FP32_MIN_ROWS", "KERNEL_CHOICES", "KERNEL_ENV", "CpuCapabilities", "DispatchRule",
    "KernelPlan", "KernelUnavailableError", "PackedBFloat16Weight", "PackedInt8Weight", "bf16_linear",
    "capabilities", "check_available", "embedding", "fbgemm", "onednn", "pack_bf16", "pack_embedding", "plan",
    "weight_only",
]
