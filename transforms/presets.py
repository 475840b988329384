"""MONAI dictionary pipelines built from the config: preprocessing, training, inference.

``Preprocessing`` is stored in every model directory, so ``medseg predict`` rebuilds
exactly the deterministic steps the network was trained with. Every spatial step is a
MONAI invertible transform, so ``monai.transforms.Invertd`` takes predictions back to the
input's own grid.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from monai import transforms as mt
from pydantic import BaseModel, ConfigDict, Field

from medseg.datasets.base import LabelScheme
from medseg.transforms.labels import LabelsToTargetd

# Axis codes in the RAS+ world space that NIfTI affines (and MONAI's readers) use.
_AXIS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


class Preprocessing(BaseModel):
    """The deterministic steps between a file on disk and the network's input.

    ``channels`` names the image channels in order, ``orientation`` the axis codes images
    are turned to, ``spacing`` the target voxel size in mm (None keeps the input's),
    ``foreground_crop`` crops to the bounding box of non-zero voxels, ``patch_size`` is the
    network's training patch and sliding-window size (voxels).
    """

    model_config = ConfigDict(extra="forbid")

    layout: str
    modality: str
    channels: list[str]
    spatial_dims: int = 3
    orientation: str = "RAS"
    spacing: list[float] | None = None
    foreground_crop: bool = True
    patch_size: list[int]
    intensity: dict[str, float] = Field(default_factory=dict)


def _load(keys: list[str]) -> list[Any]:
    return [
        mt.LoadImaged(keys, ensure_channel_first=True, image_only=True),
        mt.EnsureTyped(keys, dtype=np.float32, track_meta=True),
    ]


def _spatial(pre: Preprocessing, keys: list[str]) -> list[Any]:
    steps: list[Any] = [mt.Orientationd(keys, axcodes=pre.orientation, labels=_AXIS_LABELS)]
    if pre.spacing is not None:
        modes = ["bilinear" if key == "image" else "nearest" for key in keys]
        steps.append(mt.Spacingd(keys, pixdim=pre.spacing, mode=modes))
    if pre.foreground_crop:
        # Raw MRI and EM are zero (or dark) outside the object, so the crop runs on the
        # unnormalised image; z-scoring would make background voxels non-zero.
        steps.append(mt.CropForegroundd(keys, source_key="image", allow_smaller=True))
    return steps


def _intensity(pre: Preprocessing) -> list[Any]:
    if pre.modality == "mri":
        return [mt.NormalizeIntensityd("image", nonzero=True, channel_wise=True)]
    return [mt.NormalizeIntensityd("image", channel_wise=True)]


def preprocessing(pre: Preprocessing, *, with_label: bool) -> list[Any]:
    """The deterministic transforms, for ``image`` (and ``label`` when ``with_label``)."""
    keys = ["image", "label"] if with_label else ["image"]
    return [*_load(keys), *_spatial(pre, keys), *_intensity(pre)]


def _augmentation(augment: Any, spatial_dims: int) -> list[Any]:
    keys = ["image", "label"]
    steps: list[Any] = []
    if augment.flip:
        steps += [
            mt.RandFlipd(keys, prob=augment.flip, spatial_axis=axis) for axis in range(spatial_dims)
        ]
    if augment.rotate90:
        steps.append(mt.RandRotate90d(keys, prob=augment.rotate90, spatial_axes=(0, 1)))
    if augment.affine:
        angle = np.deg2rad(augment.rotate_degrees)
        steps.append(
            mt.RandAffined(
                keys,
                prob=augment.affine,
                rotate_range=[angle] * (3 if spatial_dims == 3 else 1),
                scale_range=[augment.scale_range] * spatial_dims,
                mode=["bilinear", "nearest"],
                padding_mode="zeros",
            )
        )
    if augment.intensity_scale:
        steps.append(mt.RandScaleIntensityd("image", factors=0.1, prob=augment.intensity_scale))
    if augment.intensity_shift:
        steps.append(mt.RandShiftIntensityd("image", offsets=0.1, prob=augment.intensity_shift))
    if augment.gamma:
        steps.append(mt.RandAdjustContrastd("image", prob=augment.gamma, gamma=(0.7, 1.5)))
    if augment.noise:
        steps.append(mt.RandGaussianNoised("image", prob=augment.noise, std=0.1))
    if augment.blur:
        steps.append(mt.RandGaussianSmoothd("image", prob=augment.blur))
    return steps


def training_transforms(
    pre: Preprocessing,
    scheme: LabelScheme,
    *,
    samples_per_case: int,
    foreground_ratio: float,
    augment: Any,
) -> mt.Compose:
    """Preprocessing, then random patches of ``pre.patch_size`` and augmentation.

    ``samples_per_case`` patches per volume, a fraction ``foreground_ratio`` of them centred
    on labelled voxels; ``augment`` is the config's ``AugmentConfig``. Output: ``image``
    ``(C, *patch)`` float32 and ``label`` as ``labels_to_target`` makes it. The steps up to
    the first random one are deterministic, so ``monai.data.CacheDataset`` caches them.
    """
    keys = ["image", "label"]
    return mt.Compose(
        [
            *preprocessing(pre, with_label=True),
            mt.SpatialPadd(keys, spatial_size=pre.patch_size),
            mt.RandCropByPosNegLabeld(
                keys,
                label_key="label",
                spatial_size=pre.patch_size,
                pos=foreground_ratio,
                neg=1 - foreground_ratio,
                num_samples=samples_per_case,
            ),
            *_augmentation(augment, pre.spatial_dims),
            LabelsToTargetd("label", scheme),
        ]
    )


def validation_transforms(pre: Preprocessing, scheme: LabelScheme) -> mt.Compose:
    """Preprocessing of image and label, the label as a target (whole volumes, no crops)."""
    return mt.Compose([*preprocessing(pre, with_label=True), LabelsToTargetd("label", scheme)])


def inference_transforms(pre: Preprocessing) -> mt.Compose:
    """Preprocessing of the image alone; ``Invertd`` with it maps predictions back."""
    return mt.Compose(preprocessing(pre, with_label=False))
