"""Memory that a prediction needs, checked against what the machine has before reading.

The estimate follows what ``Segmenter`` holds at its peak for a volume of V voxels: the
image (float32, a few copies through loading, resampling and normalisation), the blended
sliding-window logits and one channel of probabilities on the input grid. Measured: a
512x512x600 CT, 1 channel in and 3 out, peaked at 4.98 GB RSS; this formula says 6.3 GB.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

IMAGE_COPIES = 3
BYTES_PER_FLOAT = 4


def prediction_bytes(shape: Sequence[int], in_channels: int, out_channels: int) -> int:
    """Bytes a prediction of a volume of ``shape`` (voxels) needs at its peak, about."""
    voxels = math.prod(shape)
    per_voxel = BYTES_PER_FLOAT * (IMAGE_COPIES * in_channels + 2 * out_channels + 1)
    return voxels * per_voxel


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux ``MemAvailable``), or None."""
    try:
        for line in Path("/proc/meminfo").read_text(encoding="ascii").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
