"""What this CPU offers for inference arithmetic: torch's dispatch level and the flags
that decide whether bfloat16 runs natively.

bf16 autocast on the CPU is only worth trying where the hardware multiplies bf16: Intel's
AMX (``amx_bf16``) or AVX-512 BF16 (``avx512_bf16``, Intel Cooper Lake and later, AMD
Zen 4 and later). Without them oneDNN emulates it, measured 200x slower than float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

BF16_FLAGS = ("amx_bf16", "avx512_bf16")
REPORTED_FLAGS = ("avx2", "avx512f", *BF16_FLAGS, "amx_tile")


@dataclass(frozen=True)
class CpuFeatures:
    """``capability``: ``torch.backends.cpu.get_cpu_capability()`` (``AVX512``, ``AVX2``,
    ``DEFAULT`` ...); ``flags``: those of ``REPORTED_FLAGS`` that /proc/cpuinfo lists."""

    capability: str
    flags: frozenset[str]

    @property
    def native_bf16(self) -> bool:
        """Whether bf16 matrix arithmetic runs in hardware (AMX or AVX-512 BF16)."""
        return any(flag in self.flags for flag in BF16_FLAGS)

    def describe(self) -> str:
        """One line, e.g. ``AVX512 (avx2 avx512f avx512_bf16)``."""
        listed = " ".join(flag for flag in REPORTED_FLAGS if flag in self.flags)
        return f"{self.capability} ({listed or 'no AVX2/AVX-512 flags'})"


def _cpuinfo_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:  # not Linux: no flags known, so no bf16 claimed
        return frozenset()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return frozenset(line.partition(":")[2].split())


@lru_cache(maxsize=1)
def cpu_features() -> CpuFeatures:
    """This machine's ``CpuFeatures`` (read once per process)."""
    import torch

    flags = _cpuinfo_flags() & frozenset(REPORTED_FLAGS)
    return CpuFeatures(torch.backends.cpu.get_cpu_capability(), flags)
