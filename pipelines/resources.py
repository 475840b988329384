"""Memory that a prediction needs, checked against what the machine has before reading.

The estimate follows what ``Segmenter`` holds at its peak for a volume of V voxels: the
image (float32, a few copies through loading, resampling and normalisation), the blended
sliding-window logits and the probabilities of the channels being taken back to the input
grid (one channel, or as many as fit ``INVERSION_GROUP_BYTES``). Measured: a 512x512x600
CT, 1 channel in and 3 out, peaked at 4.98 GB RSS; this formula says 6.6 GB. Training's
in-memory cache of the cases (``transforms.cache: memory``) is estimated from headers.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medseg.errors import ConfigError

if TYPE_CHECKING:
    from medseg.datasets.base import Case

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


def _header_geometry(path: Path) -> tuple[tuple[int, ...], tuple[float, ...]] | None:
    """(spatial shape, voxel size in mm) from a header alone; None for formats without a
    cheap header read (TIFF, bitmaps: 2D or small) or a header that cannot be read."""
    import nibabel as nib

    from medseg.datasets.image_io import ITK_SUFFIXES, NIFTI_SUFFIXES, suffix_of

    try:
        suffix = suffix_of(path)
        if suffix in NIFTI_SUFFIXES:
            header = nib.load(path).header
            rank = min(len(header.get_data_shape()), 3)
            shape = tuple(int(s) for s in header.get_data_shape()[:rank])
            return shape, tuple(float(z) for z in header.get_zooms()[:rank])
        if suffix in ITK_SUFFIXES:
            import SimpleITK as sitk

            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            rank = min(reader.GetDimension(), 3)
            return tuple(reader.GetSize()[:rank]), tuple(reader.GetSpacing()[:rank])
    except Exception:  # the data checks name unreadable files; this is only an estimate
        return None
    return None


def cache_bytes(cases: Sequence[Case], spacing: Sequence[float] | None) -> int:
    """Bytes ``transforms.cache: memory`` holds for ``cases``: every image channel and the
    label as float32, resampled to ``spacing`` (mm; None keeps each input's), from headers
    alone. Foreground cropping makes the real figure smaller; cases whose header is not
    cheap to read count nothing."""
    total = 0
    for case in cases:
        geometry = _header_geometry(case.image[0])
        if geometry is None:
            continue
        shape, zooms = geometry
        voxels = float(math.prod(shape))
        if spacing is not None and len(spacing) == len(zooms) and all(z > 0 for z in zooms):
            voxels *= math.prod(z / s for z, s in zip(zooms, spacing, strict=True))
        per_file = 1 if len(case.image) > 1 else _channels(case.image[0])
        total += int(voxels) * 4 * (len(case.image) * per_file + 1)
    return total


def _channels(path: Path) -> int:
    import nibabel as nib

    from medseg.datasets.image_io import NIFTI_SUFFIXES, suffix_of

    if suffix_of(path) in NIFTI_SUFFIXES:
        with contextlib.suppress(Exception):
            return max(1, math.prod(nib.load(path).header.get_data_shape()[3:]))
    return 1


def require_cache_memory(cases: Sequence[Case], spacing: Sequence[float] | None) -> None:
    """Refuse (``ConfigError`` naming ``transforms.cache``) an in-memory cache of the
    training and validation cases that would not fit the memory available."""
    needed, available = cache_bytes(cases, spacing), available_memory()
    if available is not None and needed > available:
        raise ConfigError(
            f"transforms.cache memory: caching the {len(cases)} cases needs about "
            f"{needed / 2**30:.1f} GB, {available / 2**30:.1f} GB is available; use "
            "transforms.cache: disk (or none)"
        )
