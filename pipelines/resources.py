"""Memory that a prediction needs, checked against what the machine has before reading.

The estimate follows what ``Segmenter`` holds at its peak for a volume of V voxels: the
image (float32, a few copies through loading, resampling and normalisation), the blended
sliding-window logits and the probabilities of the channels being taken back to the input
grid (one channel, or as many as fit ``INVERSION_GROUP_BYTES``). Measured: a 512x512x600
CT, 1 channel in and 3 out, peaked at 4.98 GB RSS; this formula says 6.6 GB.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

IMAGE_COPIES = 3
BYTES_PER_FLOAT = 4
# Channels resampled to the input grid together share one sampling grid (MONAI's resampling
# builds it per call): all 3 channels of a 512x512x48 CT at once took 1.1 s, one by one 2.0 s.
INVERSION_GROUP_BYTES = 256 * 2**20


def prediction_bytes(shape: Sequence[int], in_channels: int, out_channels: int) -> int:
    """Bytes a prediction of a volume of ``shape`` (voxels) needs at its peak, about."""
    voxels = math.prod(shape)
    per_voxel = BYTES_PER_FLOAT * (IMAGE_COPIES * in_channels + 2 * out_channels + 1)
    return voxels * per_voxel + INVERSION_GROUP_BYTES


def inversion_groups(channels: int, input_voxels: int | None) -> list[range]:
    """Channels to take back to an input grid of ``input_voxels`` voxels together: as many
    as ``INVERSION_GROUP_BYTES`` of float32 holds, at least one (one when unknown)."""
    size = 1
    if input_voxels:
        size = max(1, INVERSION_GROUP_BYTES // (BYTES_PER_FLOAT * input_voxels))
    return [range(start, min(start + size, channels)) for start in range(0, channels, size)]


def _meminfo(field: str) -> int | None:
    """Bytes of ``field`` (``MemAvailable``, ``MemTotal``) in Linux's /proc/meminfo, or None."""
    try:
        for line in Path("/proc/meminfo").read_text(encoding="ascii").splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux ``MemAvailable``), or None."""
    return _meminfo("MemAvailable")


def total_memory() -> int | None:
    """Bytes of memory the machine has (Linux ``MemTotal``), or None."""
    return _meminfo("MemTotal")


def device_memory(device: Any) -> int | None:
    """Bytes free for new allocations on ``device`` (a ``torch.device``; None when unknown)."""
    if device.type == "cuda":
        import torch

        return int(torch.cuda.mem_get_info(device)[0])
    return available_memory()
