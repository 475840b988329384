"""Memory a training step needs, checked against what the device has before training starts.

A training step holds every activation of the forward pass until the backward pass
consumes it. Their sum is counted exactly, without allocating anything, by running the
network on PyTorch's ``meta`` device with a hook on every leaf module; networks with
data-dependent steps (Swin's ``.item()``) are counted on a real forward of a small patch
and scaled by voxels. Measured on a CPU: UNet++ small, 2 patches of 64^3 with 4 channels,
peaked at 1.82 GB over the process's baseline; the count says 1.78 GB. An in-memory
cache of the cases (``transforms.cache: memory``) is estimated from their headers.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from medseg.datasets.base import Case
from medseg.errors import ConfigError

logger = logging.getLogger(__name__)

# Weights, their gradients and AdamW's two moments.
PARAMETER_COPIES = 4
# A smaller patch is tried in steps of this many voxels a side (a multiple of every
# network's downsampling factor up to 2^4).
PATCH_STEP = 16
SMALL_SIDE = 32


def _output_bytes(network: torch.nn.Module, image: torch.Tensor) -> int:
    total = 0

    def count(module: Any, inputs: Any, output: Any) -> None:
        nonlocal total
        for tensor in output if isinstance(output, list | tuple) else [output]:
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()

    leaves = [m for m in network.modules() if not list(m.children())]
    handles = [leaf.register_forward_hook(count) for leaf in leaves]
    try:
        network.train()
        network(image)
    finally:
        for handle in handles:
            handle.remove()
    return total


def activation_bytes(build: Any, in_channels: int, patch: Sequence[int]) -> int | None:
    """Bytes of activations one training forward of one ``patch`` keeps for the backward
    pass; ``build()`` makes the (untrained) network. None when it cannot be counted."""
    try:
        with torch.device("meta"):
            network = build()
        return _output_bytes(network, torch.empty(1, in_channels, *patch, device="meta"))
    except Exception as error:  # an op without a meta kernel: count a small real patch
        logger.debug("meta count failed (%s); counting a small patch", error)
    small = [min(side, SMALL_SIDE) for side in patch]
    try:
        network = build()
        with torch.random.fork_rng(devices=[]):
            counted = _output_bytes(network, torch.zeros(1, in_channels, *small))
    except Exception as error:  # leave the check to the kernel rather than refuse wrongly
        logger.debug("activation count failed (%s)", error)
        return None
    return int(counted * math.prod(patch) / math.prod(small))


def training_bytes(build: Any, in_channels: int, patch: Sequence[int], patches: int) -> int | None:
    """Bytes a training step of ``patches`` patches of size ``patch`` needs at its peak."""
    activations = activation_bytes(build, in_channels, patch)
    if activations is None:
        return None
    with torch.device("meta"):
        parameters = sum(p.numel() * p.element_size() for p in build().parameters())
    return activations * patches + PARAMETER_COPIES * parameters


def device_memory(device: torch.device) -> int | None:
    """Bytes free for new allocations on ``device`` (None when unknown)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    from medseg.pipelines.resources import available_memory

    return available_memory()


def require_training_memory(
    build: Any, in_channels: int, patch: Sequence[int], patches: int, device: torch.device
) -> None:
    """Refuse (``ConfigError`` naming ``transforms.patch_size``) a training step that would
    not fit ``device``'s free memory, with the estimate and the largest patch that fits."""
    available = device_memory(device)
    needed = training_bytes(build, in_channels, patch, patches)
    if available is None or needed is None or needed <= available:
        return
    fitting = _largest_fitting(build, in_channels, patch, patches, available)
    advice = (
        f"the largest patch that fits is about {fitting}"
        if fitting
        else "even a 16-voxel patch does not fit"
    )
    raise ConfigError(
        f"transforms.patch_size {list(patch)}: a training step of {patches} patches needs "
        f"about {needed / 2**30:.1f} GB, {available / 2**30:.1f} GB is free on {device.type}; "
        f"{advice} (or lower train.batch_size or transforms.samples_per_case)"
    )


def _largest_fitting(
    build: Any, in_channels: int, patch: Sequence[int], patches: int, available: int
) -> list[int] | None:
    needed = training_bytes(build, in_channels, patch, patches) or 0
    scale = (available / max(needed, 1)) ** (1 / len(patch))
    candidate = [max(PATCH_STEP, int(side * scale) // PATCH_STEP * PATCH_STEP) for side in patch]
    while True:
        estimate = training_bytes(build, in_channels, candidate, patches)
        if estimate is not None and estimate <= available:
            return candidate
        if max(candidate) <= PATCH_STEP:
            return None
        largest = candidate.index(max(candidate))
        candidate[largest] -= PATCH_STEP


def _header_geometry(path: Path) -> tuple[tuple[int, ...], tuple[float, ...]] | None:
    """(spatial shape, voxel size in mm) from a header alone; None for formats without a
    cheap header read (TIFF, bitmaps: 2D or small) or a header that cannot be read."""
    import nibabel as nib

    from medseg.datasets.headers import ITK_SUFFIXES, NIFTI_SUFFIXES, suffix_of

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

    from medseg.datasets.headers import NIFTI_SUFFIXES, suffix_of

    if suffix_of(path) in NIFTI_SUFFIXES:
        with contextlib.suppress(Exception):
            return max(1, math.prod(nib.load(path).header.get_data_shape()[3:]))
    return 1


def require_cache_memory(cases: Sequence[Case], spacing: Sequence[float] | None) -> None:
    """Refuse (``ConfigError`` naming ``transforms.cache``) an in-memory cache of the
    training and validation cases that would not fit the memory available."""
    from medseg.pipelines.resources import available_memory

    needed, available = cache_bytes(cases, spacing), available_memory()
    if available is not None and needed > available:
        raise ConfigError(
            f"transforms.cache memory: caching the {len(cases)} cases needs about "
            f"{needed / 2**30:.1f} GB, {available / 2**30:.1f} GB is available; use "
            "transforms.cache: disk (or none)"
        )
