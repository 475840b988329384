"""Planning from the data: spacing, normalisation, patch, batch and pooling from a fingerprint.

nnU-Net's central idea (its ``ExperimentPlanner``): the choices a config would guess are
derived once from the training set's fingerprint and a memory budget, then applied
identically in training and prediction. medseg follows its rules, written anew; every
departure is listed in ``docs/planning.md``. The rules:

- target spacing: the median per axis; on anisotropic data (coarse axis >= 3x the others,
  and >= 3x fewer voxels along it) the coarse axis takes the 10th percentile instead;
- normalisation per modality: CT a Hounsfield window from the foreground's 0.5-99.5th
  percentiles and the foreground's mean and std; MRI and other z-scored data over the whole
  image, or over the body when cropping to non-zero keeps under 3/4 of the median image or
  the body fills under 3/4 of it (a skull-stripped brain whose air carries noise);
- patch: start from 256^3 (2D: 2048^2) voxels shaped like the median resampled image in mm,
  capped at that image, divisible by the network's pooling; shrink the axis largest against
  the median image until training fits the memory budget;
- UNet++ pooling: per level, an axis is pooled while its feature map keeps >= 8 voxels and
  its spacing is under twice the finest, up to the preset's depth;
- batch: as many patches as the budget holds, at least 2, at most 5 % of the dataset's voxels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from medseg.datasets.fingerprint import Fingerprint, significant
from medseg.errors import ConfigError
from medseg.pipelines.model_dir import NetworkSpec

PLAN_VERSION = 1
ANISOTROPY = 3.0
# nnU-Net: crop to non-zero, and normalise inside it, when that keeps under 3/4 of an image.
CROP_SHRINKS = 0.75
MIN_FEATURE_MAP = 4
# Below this many voxels per axis a patch holds too little context to learn from.
MIN_PATCH_SIZE = 16
INITIAL_PATCH_VOXELS = {2: 2048**2, 3: 256**3}
# Patches per step: nnU-Net's floor, and its cap of 5 % of the dataset's voxels.
MIN_PATCHES = 2
DATASET_SHARE = 0.05
# Autograd keeps the activations of the forward pass; the backward pass allocates about as
# much again for their gradients at its peak.
BACKWARD_FACTOR = 2.0
# Weights, gradients and two AdamW moments, float32.
BYTES_PER_PARAMETER = 16
MIN_CASES = 2


def target_spacing(fingerprint: Fingerprint) -> list[float] | None:
    """The voxel size (mm, RAS order) to resample to, or None for images without geometry.

    The median of the training set; on anisotropic data the coarse axis takes the 10th
    percentile instead (never finer than the other axes), so thick-slice cases are not
    interpolated further apart than most of the data (nnU-Net's rule).
    """
    spacings = fingerprint.spacings
    if fingerprint.layout == "isic" or len(spacings) == 0:
        return None
    target = np.median(spacings, axis=0)
    shape = np.median(fingerprint.shapes, axis=0) * np.median(spacings, axis=0) / target
    coarse = int(np.argmax(target))
    others = [axis for axis in range(len(target)) if axis != coarse]
    if others:
        spacing_ratio = target[coarse] / max(target[others])
        voxel_ratio = min(shape[others]) / shape[coarse]
        if spacing_ratio >= ANISOTROPY and voxel_ratio >= ANISOTROPY:
            tenth = float(np.percentile(spacings[:, coarse], 10))
            target[coarse] = max(tenth, max(target[others]))
    return significant(target).tolist()


def normalization(fingerprint: Fingerprint) -> str:
    """The intensity rule for the dataset (see ``medseg.transforms.presets.NORMALIZATIONS``)."""
    if fingerprint.modality == "ct":
        return "ct_window"
    if fingerprint.modality == "em":
        return "percentile"
    background = min(fingerprint.median_crop_ratio, fingerprint.median_body_share)
    if fingerprint.modality == "mri" and background < CROP_SHRINKS:
        return "zscore_body"
    return "zscore_image"


def ct_statistics(values: np.ndarray, window: Sequence[float] | None = None) -> dict[str, float]:
    """CT normalisation from foreground Hounsfield units ``values``: ``window`` (None: their
    0.5 and 99.5 percentiles) and their mean and std inside it. Raises ``ConfigError``
    without foreground voxels."""
    if values.size == 0:
        raise ConfigError("no labelled voxels in the training cases to fit the CT window on")
    low, high = window if window is not None else np.percentile(values, [0.5, 99.5])
    clipped = np.clip(values, low, high)
    return {
        "window_low": float(low),
        "window_high": float(high),
        "mean": float(clipped.mean()),
        "std": float(max(clipped.std(), 1e-3)),
    }


def median_shape(
    fingerprint: Fingerprint, spacing: Sequence[float] | None, crop: bool
) -> list[int]:
    """Median image size in voxels (RAS order) after resampling to ``spacing`` and, with
    ``crop``, cropping to the non-zero box."""
    shapes = fingerprint.cropped_shapes if crop else fingerprint.shapes
    if spacing is not None:
        shapes = shapes * fingerprint.spacings / np.asarray(spacing, dtype=float)
    return [max(1, round(float(size))) for size in np.median(shapes, axis=0)]


def unet_strides(patch: Sequence[int], spacing: Sequence[float], depth: int) -> list[list[int]]:
    """Pooling factors per level and axis for a UNet on ``patch`` (voxels) at ``spacing``:
    an axis is pooled while its feature map keeps >= ``2 * MIN_FEATURE_MAP`` voxels and its
    current spacing is under twice the finest one; at most ``depth`` levels, and only as
    many as pool some axis."""
    sizes = list(patch)
    current = list(spacing)
    strides = []
    for _ in range(depth):
        poolable = [axis for axis, size in enumerate(sizes) if size >= 2 * MIN_FEATURE_MAP]
        if not poolable:
            break
        finest = min(current[axis] for axis in poolable)
        level = [
            2 if axis in poolable and current[axis] < 2 * finest else 1
            for axis in range(len(sizes))
        ]
        strides.append(level)
        sizes = [size // factor for size, factor in zip(sizes, level, strict=True)]
        current = [size * factor for size, factor in zip(current, level, strict=True)]
    return strides


def _build(choice: NetworkSpec, options: dict[str, Any]) -> Any:
    from medseg.pipelines.model_dir import build_from_spec

    return build_from_spec(choice.model_copy(update={"options": options}))


_SIZE_RULES: dict[str, tuple[list[int], dict[int, int]]] = {}


def _size_rule(choice: NetworkSpec, options: dict[str, Any]) -> tuple[list[int], dict[int, int]]:
    """What each patch axis must divide by, and the axes whose size the network fixes;
    found once per network and options (shrinking a patch asks again at every step)."""
    key = repr((choice, sorted(options.items())))
    if key not in _SIZE_RULES:
        from medseg.networks import abilities, input_divisor, resolved_options

        network = _build(choice, options)
        fixed: dict[int, int] = {}
        depth_option = abilities(choice.name).fixed_depth
        if depth_option is not None:
            depth = resolved_options(choice.name, choice.preset, options)[depth_option]
            fixed[choice.spatial_dims - 1] = int(depth)
        _SIZE_RULES[key] = (list(input_divisor(network)), fixed)
    divisor, fixed = _SIZE_RULES[key]
    return list(divisor), dict(fixed)


_PROBES: dict[str, tuple[float, int]] = {}


def _probe(choice: NetworkSpec, options: dict[str, Any], shape: Sequence[int]) -> tuple[float, int]:
    """Bytes autograd keeps per input voxel in a training forward on ``shape``, and the
    network's parameter count; measured once per network and options."""
    import torch

    key = repr((choice, sorted(options.items()), list(shape)))
    if key not in _PROBES:
        network = _build(choice, options).train()
        # Weights are saved for the backward pass too; they are counted once, apart.
        weights = {parameter.untyped_storage().data_ptr() for parameter in network.parameters()}
        kept: dict[tuple[int, int], int] = {}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in weights:
                kept[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
            return tensor

        inputs = torch.zeros(1, choice.in_channels, *shape)
        inputs.normal_(generator=torch.Generator().manual_seed(0))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            network(inputs)
        parameters = sum(parameter.numel() for parameter in network.parameters())
        _PROBES[key] = (sum(kept.values()) / math.prod(shape), parameters)
    return _PROBES[key]


def training_bytes(
    choice: NetworkSpec, options: dict[str, Any], patch: Sequence[int], patches: int
) -> int:
    """Memory one training step of ``patches`` patches of ``patch`` voxels needs, about:
    the activations autograd keeps (measured on a small input, scaled by voxels) twice over
    for the backward pass, plus weights, gradients and optimiser moments."""
    divisor, fixed = _size_rule(choice, options)
    probe = [fixed.get(axis, 2 * k) for axis, k in enumerate(divisor)]
    per_voxel, parameters = _probe(choice, options, probe)
    activations = BACKWARD_FACTOR * per_voxel * math.prod(patch) * patches
    return int(activations + BYTES_PER_PARAMETER * parameters)


def _round_up(patch: Sequence[int], divisor: Sequence[int], fixed: dict[int, int]) -> list[int]:
    return [
        fixed.get(axis, max(k, -(-size // k) * k))
        for axis, (size, k) in enumerate(zip(patch, divisor, strict=True))
    ]


def network_options(
    choice: NetworkSpec, patch: Sequence[int], spacing: Sequence[float], plan_pooling: bool
) -> dict[str, Any]:
    """The config's options, with UNet++'s depth and pooling matched to ``patch``."""
    options = dict(choice.options)
    from medseg.networks import abilities

    if not plan_pooling or not abilities(choice.name).planned_pooling:
        return options
    from medseg.networks.unetpp import PRESETS

    features = list(options.get("features", PRESETS[choice.preset]["features"]))
    strides = unet_strides(patch, spacing, len(features) - 1)
    if not strides:
        strides = [[2] * len(patch)]
    return options | {"features": features[: len(strides) + 1], "strides": strides}


def _initial_patch(median: Sequence[int], spacing: Sequence[float]) -> list[int]:
    """``INITIAL_PATCH_VOXELS`` shaped as a cube in mm, capped at the median image."""
    dims = len(median)
    inverse = 1 / np.asarray(spacing, dtype=float)
    scale = (INITIAL_PATCH_VOXELS[dims] / np.prod(inverse)) ** (1 / dims)
    return [max(1, min(round(i * scale), m)) for i, m in zip(inverse, median, strict=True)]


def plan_patch(
    choice: NetworkSpec,
    median: Sequence[int],
    spacing: Sequence[float],
    budget: int,
    *,
    patches: int = MIN_PATCHES,
    plan_pooling: bool = True,
) -> tuple[list[int], dict[str, Any], int]:
    """The largest patch, from ``_initial_patch`` down, whose training step of ``patches``
    patches fits ``budget`` bytes, with the network options it needs. Returns ``(patch,
    options, bytes needed)``; raises ``ConfigError`` naming the smallest workable patch
    (``MIN_PATCH_SIZE`` per axis, or the median image where that is smaller) and its memory
    when nothing fits."""
    current = _initial_patch(median, spacing)
    floor = [min(MIN_PATCH_SIZE, size) for size in median]
    while True:
        options = network_options(choice, current, spacing, plan_pooling)
        divisor, fixed = _size_rule(choice, options)
        rounded = _round_up(current, divisor, fixed)
        need = training_bytes(choice, options, rounded, patches)
        if need <= budget:
            return rounded, options, need
        shrinkable = [
            axis
            for axis, size in enumerate(rounded)
            if axis not in fixed and size - divisor[axis] >= floor[axis]
        ]
        if not shrinkable:
            options = network_options(choice, floor, spacing, plan_pooling)
            divisor, fixed = _size_rule(choice, options)
            smallest = _round_up(floor, divisor, fixed)
            least = training_bytes(choice, options, smallest, patches)
            raise ConfigError(
                f"memory budget {budget / 2**30:.2f} GB is too small to train "
                f"{choice.name}/{choice.preset}: the smallest workable patch {smallest} needs "
                f"{least / 2**30:.2f} GB ({patches} patches per step)"
            )
        axis = max(shrinkable, key=lambda a: rounded[a] / max(median[a], 1))
        current = list(rounded)
        current[axis] = rounded[axis] - divisor[axis]


def plan_batch(
    choice: NetworkSpec,
    options: dict[str, Any],
    patch: Sequence[int],
    budget: int,
    dataset_voxels: float,
    samples_per_case: int,
    training_cases: int,
) -> int:
    """Volumes per step (``train.batch_size``; each gives ``samples_per_case`` patches): as
    many patches as ``budget`` holds, at least ``MIN_PATCHES``, at most ``DATASET_SHARE`` of
    the dataset's voxels, and no more volumes than there are training cases."""
    one = training_bytes(choice, options, patch, 1) - training_bytes(choice, options, patch, 0)
    fixed = training_bytes(choice, options, patch, 0)
    fits = int((budget - fixed) // max(one, 1))
    share = round(DATASET_SHARE * dataset_voxels / math.prod(patch))
    patches = max(MIN_PATCHES, min(fits, share))
    return max(1, min(patches // samples_per_case, training_cases))
