"""What this CPU can run: the one source of CPU features that kernel choice, compute dtype and reports read.

Detection asks torch (``torch.cpu._is_*_supported``, the checks its own kernels dispatch on), so what we
report is what torch will run. Tests and users on a CPU other than the one they target can replace the
detected capabilities with ``overridden(...)`` or ``OPTIMUM_INT8_CPU_CAPABILITIES`` (a comma-separated
list of flags, e.g. ``"avx2"`` or ``"avx2,avx512,avx512_vnni"``); a faked flag the CPU lacks makes only
the choices, not the instructions: forcing a kernel the CPU cannot run still fails in that kernel.
"""

import contextlib
import dataclasses
import functools
import os

import torch

CAPABILITIES_ENV = "OPTIMUM_INT8_CPU_CAPABILITIES"


@dataclasses.dataclass(frozen=True)
class CpuCapabilities:
    """The x86 instruction-set features that decide which int8 and bf16 kernels are fast (or correct)."""

    avx2: bool = False
    avx512: bool = False
    # u8 x s8 dot products summed into int32 (AVX-512 VNNI / AVX-VNNI): full 8-bit activations are exact.
    avx512_vnni: bool = False
    # bf16 dot products on AVX-512 (no faster than fp32 FMA per cycle).
    avx512_bf16: bool = False
    # AMX tiles: int8 and bf16 matrix multiply units, several times the AVX-512 throughput.
    amx_int8: bool = False
    amx_bf16: bool = False

    FLAGS = ("avx2", "avx512", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16")

    @property
    def native_bf16(self) -> bool:
        """bf16 products run in hardware (AVX-512 BF16 or AMX), not emulated through fp32."""
        return self.avx512_bf16 or self.amx_bf16

    @property
    def needs_reduce_range(self) -> bool:
        """Without VNNI, int8 GEMMs sum u8 x s8 pairs into int16 (``vpmaddubsw``), which saturates with
        8-bit activations: activations must then be quantized to 7 bits."""
        return not self.avx512_vnni

    def flags(self) -> list[str]:
        return [flag for flag in self.FLAGS if getattr(self, flag)]

    @classmethod
    def from_flags(cls, flags, source: str = "capabilities") -> "CpuCapabilities":
        flags = [flag.strip() for flag in flags if flag.strip()]
        unknown = sorted(set(flags) - set(cls.FLAGS))
        if unknown:
            raise ValueError(f"{source}: unknown CPU flag(s) {unknown}; known flags are {list(cls.FLAGS)}")
        return cls(**dict.fromkeys(flags, True))


@functools.lru_cache(maxsize=1)
def detect() -> CpuCapabilities:
    """The capabilities of this CPU, as torch sees them (cached: they do not change while running)."""
    cpu = torch.cpu
    amx = cpu._is_amx_tile_supported()
    bf16 = cpu._is_avx512_bf16_supported() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return CpuCapabilities(
        avx2=cpu._is_avx2_supported(),
        avx512=cpu._is_avx512_supported(),
        avx512_vnni=cpu._is_vnni_supported(),
        avx512_bf16=bf16,
        amx_int8=amx,
        amx_bf16=amx and bf16,
    )


_override: list[CpuCapabilities] = []


def current() -> CpuCapabilities:
    """The capabilities every choice is made from: an override (``overridden``, the environment) or detected."""
    if _override:
        return _override[-1]
    flags = os.environ.get(CAPABILITIES_ENV)
    if flags is not None:
        return CpuCapabilities.from_flags(flags.split(","), f"environment variable {CAPABILITIES_ENV}")
    return detect()


@contextlib.contextmanager
def overridden(capabilities: CpuCapabilities):
    """Make choices as if the CPU had ``capabilities`` (packing done inside keeps its choice afterwards)."""
    _override.append(capabilities)
    try:
        yield capabilities
    finally:
        _override.pop()
