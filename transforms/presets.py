"""MONAI dictionary pipelines built from the config: preprocessing, training, inference.

``Preprocessing`` is stored in every model directory, so ``medseg predict`` rebuilds
exactly the deterministic steps the network was trained with. Every spatial step is a
MONAI invertible transform, so ``monai.transforms.Invertd`` takes predictions back to the
input's own grid.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from monai import transforms as mt

from medseg.datasets.base import LabelScheme
from medseg.errors import ConfigError
from medseg.transforms.checks import RequireUsableImaged
from medseg.transforms.labels import LabelsToTargetd, SamplingMasksd
from medseg.transforms.slices import AdjacentSlicesd
from medseg.transforms.spec import Normalization, Preprocessing  # noqa: F401  (re-exported)

# Axis codes in the RAS+ world space that NIfTI affines (and MONAI's readers) use.
_AXIS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


NORMALIZATIONS: dict[str, str] = {
    "ct_window": "Hounsfield units clipped to the fitted window, then the training "
    "foreground's mean and std",
    "zscore_image": "each channel z-scored over the whole image",
    "zscore_body": "each channel z-scored over the body (voxels whose smoothed value is "
    "above BODY_FRACTION of the channel's 99.5th percentile); 0 outside it",
    "zscore_nonzero": "each channel z-scored over its non-zero voxels",
    "percentile": "each channel's 0.5-99.5th percentiles scaled to 0..1",
}
# A share of a channel's bright end below which a voxel is background: above the noise of an
# MRI's air (a few percent of tissue signal) and below dark tissue such as CSF on T1, and a
# ratio, so it holds whatever the scanner's intensity scale.
BODY_FRACTION = 0.05
BODY_PERCENTILE = 99.5
BODY_SMOOTHING = 1.0


# nnU-Net resamples the through-plane axis of strongly anisotropic data on its own, with
# nearest-neighbour interpolation, to avoid smearing thick slices into each other.
ANISOTROPY_RATIO = 3.0
# Hounsfield units below which CT voxels are air outside the body.
CT_BODY_THRESHOLD = -500.0


def _load(keys: list[str]) -> list[Any]:
    from medseg.transforms.readers import image_readers

    return [
        mt.LoadImaged(keys, reader=image_readers(), ensure_channel_first=True, image_only=True),
        mt.EnsureTyped(keys, dtype=np.float32, track_meta=True),
    ]


def _resampling(pre: Preprocessing, keys: list[str]) -> list[Any]:
    target = list(pre.spacing or [])
    if not target:
        return []
    image_mode = ["bilinear" if key == "image" else "nearest" for key in keys]
    thick = max(range(len(target)), key=lambda axis: target[axis])
    if len(target) == 3 and target[thick] >= ANISOTROPY_RATIO * min(target):
        in_plane = [0.0 if axis == thick else size for axis, size in enumerate(target)]
        through_plane = [size if axis == thick else 0.0 for axis, size in enumerate(target)]
        return [
            mt.Spacingd(keys, pixdim=in_plane, mode=image_mode),
            mt.Spacingd(keys, pixdim=through_plane, mode="nearest"),
        ]
    return [mt.Spacingd(keys, pixdim=target, mode=image_mode)]


def is_body(image: Any) -> Any:
    """CT foreground for cropping: voxels denser than air."""
    return image > CT_BODY_THRESHOLD


def is_positive(image: Any) -> Any:
    """MRI foreground for cropping: the non-zero (skull-stripped) voxels."""
    return image > 0


def body_thresholds(image: Any) -> list[float]:
    """Per channel of a ``(C, *spatial)`` image, ``BODY_FRACTION`` of its
    ``BODY_PERCENTILE``-th percentile: the value above which a voxel is body, not air."""
    plain = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)
    flat = plain.reshape(plain.shape[0], -1)
    # A strided subsample of at most a million values per channel: a percentile to well
    # under a percent, without sorting a whole CT.
    step = max(1, flat.shape[1] // 1_000_000)
    return [
        BODY_FRACTION * max(float(torch.quantile(row[::step].float(), BODY_PERCENTILE / 100)), 0)
        for row in flat
    ]


def is_above_background(image: Any) -> Any:
    """The body of a ``(C, *spatial)`` image: per channel, the voxels whose neighbourhood
    (a Gaussian of ``BODY_SMOOTHING`` voxels) is above ``body_thresholds``. Exact zeros and
    low noise are background alike: smoothing first keeps the odd bright noise voxel out of
    the body, which it would otherwise speckle with values the network never saw on zero
    backgrounds."""
    from scipy import ndimage

    plain = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)
    body = torch.zeros(plain.shape, dtype=torch.bool)
    for channel, threshold in enumerate(body_thresholds(plain)):
        smoothed = ndimage.gaussian_filter(
            plain[channel].cpu().numpy().astype(np.float32, copy=False), BODY_SMOOTHING
        )
        body[channel] = torch.from_numpy(smoothed > threshold)
    return body.to(plain.device)


class ZScoreBodyd(mt.MapTransform):
    """Z-score each channel over its body (``is_above_background``), and set the voxels
    outside it to 0, so that a background of exact zeros and one of low noise give the same
    network input. The statistics include the band of air the smoothed edge takes in,
    whichever it holds: leaving out only its zeros would weigh noisy and clean air apart.
    nnU-Net z-scores over the non-zero mask, which low noise fills whole; MONAI's
    ``NormalizeIntensity`` takes no mask, hence this transform."""

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        """Normalise ``data[key]`` ``(C, *spatial)`` float32 in place of the original."""
        result = dict(data)
        for key in self.key_iterator(result):
            image = result[key]
            body = is_above_background(image)
            normalised = image.clone()  # keeps MONAI's metadata, which Invertd needs
            for channel in range(image.shape[0]):
                values = image[channel][body[channel]]
                mean, std = (
                    (values.mean(), values.std(unbiased=False)) if values.numel() else (0, 1)
                )
                normalised[channel] = torch.where(
                    body[channel], (image[channel] - mean) / max(float(std), 1e-8), 0.0
                )
            result[key] = normalised
        return result


def _spatial(pre: Preprocessing, keys: list[str]) -> list[Any]:
    axcodes = pre.orientation[: pre.spatial_dims]
    steps: list[Any] = [mt.Orientationd(keys, axcodes=axcodes, labels=_AXIS_LABELS)]
    steps += _resampling(pre, keys)
    if pre.foreground_crop:
        # Runs on the unnormalised image: after z-scoring, background is no longer zero.
        select = {"ct_window": is_body, "zscore_body": is_above_background}.get(
            pre.normalization_rule, is_positive
        )
        steps.append(
            mt.CropForegroundd(keys, source_key="image", select_fn=select, allow_smaller=True)
        )
    return steps


def _intensity(pre: Preprocessing) -> list[Any]:
    rule = pre.normalization_rule
    if rule == "zscore_nonzero":
        return [mt.NormalizeIntensityd("image", nonzero=True, channel_wise=True)]
    if rule == "zscore_body":
        return [ZScoreBodyd("image")]
    if rule == "ct_window":
        stats = pre.intensity
        if pre.missing_statistics:
            raise ConfigError(
                "the model's CT preprocessing lacks the fitted statistics "
                f"{pre.missing_statistics} (preprocessing.intensity; a trained model has them)"
            )
        return [
            mt.ThresholdIntensityd(
                "image", threshold=stats["window_high"], above=False, cval=stats["window_high"]
            ),
            mt.ThresholdIntensityd(
                "image", threshold=stats["window_low"], above=True, cval=stats["window_low"]
            ),
            mt.NormalizeIntensityd("image", subtrahend=stats["mean"], divisor=stats["std"]),
        ]
    if rule == "percentile":
        return [
            mt.ScaleIntensityRangePercentilesd(
                "image", lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, clip=True, channel_wise=True
            )
        ]
    # zscore_image, and RGB's rule: each image z-scored per channel, as nnU-Net does for
    # non-CT data. Scaled to 0..1 instead, dermoscopy phantoms kept a standard deviation of
    # about 0.15 and the tiny Att-SwinU-Net did not learn from whole images in 80 steps
    # (loss flat at 0.80).
    return [mt.NormalizeIntensityd("image", channel_wise=True)]


def preprocessing(pre: Preprocessing, *, with_label: bool) -> list[Any]:
    """The deterministic transforms, for ``image`` (and ``label`` when ``with_label``)."""
    keys = ["image", "label"] if with_label else ["image"]
    steps = [*_load(keys), RequireUsableImaged("image"), *_spatial(pre, keys), *_intensity(pre)]
    if pre.slices > 1:
        steps.append(AdjacentSlicesd("image", pre.slices))
    return steps


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
    foreground_classes: Literal["any", "balanced"] = "any",
) -> mt.Compose:
    """Preprocessing, then random patches of ``pre.patch_size`` and augmentation.

    ``samples_per_case`` patches per volume, a fraction ``foreground_ratio`` of them centred
    on foreground (any region, or any class but the first: membranes for ISBI EM, whose
    background value is 255): on a voxel of any of them (``foreground_classes="any"``), or
    on a voxel of one drawn with equal odds among those the case holds (``"balanced"``, as
    nnU-Net oversamples, so a small class such as a tumour is not outnumbered by its
    organ); ``augment`` is the config's ``AugmentConfig``. Output: ``image``
    ``(C, *patch)`` float32 and ``label`` as ``labels_to_target`` makes it. The steps up to
    the first random one are deterministic, so ``monai.data.CacheDataset`` caches them.
    """
    keys = ["image", "label"]
    # A 2D network on volumes trains on crops one slice deep, then drops that axis.
    crop = [*pre.patch_size, 1] if pre.slice_wise else pre.patch_size
    flatten = [mt.SqueezeDimd(keys, dim=-1)] if pre.slice_wise else []
    return mt.Compose(
        [
            *preprocessing(pre, with_label=True),
            # Targets before cropping, so that crops centre on foreground and padding is
            # background whatever the label values (raw ISBI labels are 0 on membranes).
            LabelsToTargetd("label", scheme),
            mt.SpatialPadd(keys, spatial_size=crop),
            *_centred_crops(crop, scheme, samples_per_case, foreground_ratio, foreground_classes),
            *flatten,
            *_augmentation(augment, len(pre.patch_size)),
        ]
    )


def _centred_crops(
    crop: list[int],
    scheme: LabelScheme,
    samples: int,
    foreground_ratio: float,
    foreground_classes: str,
) -> list[Any]:
    """Random crops of size ``crop`` centred on background or foreground (see
    ``training_transforms``), on the target ``LabelsToTargetd`` made."""
    keys = ["image", "label"]
    by_class = foreground_classes == "balanced"
    if by_class:
        count = len(scheme.foreground)
        crop_step = mt.RandCropByLabelClassesd(
            keys,
            label_key="label_sampling",
            spatial_size=crop,
            # A case without some class (a liver without tumour) draws among the others; one
            # without any foreground falls back to background, whose odds are never zero.
            ratios=[max(1 - foreground_ratio, 1e-6)] + [foreground_ratio / count] * count,
            num_samples=samples,
            warn=False,
        )
    else:
        crop_step = mt.RandCropByPosNegLabeld(
            keys,
            label_key="label_sampling",
            spatial_size=crop,
            pos=foreground_ratio,
            neg=1 - foreground_ratio,
            num_samples=samples,
        )
    return [
        SamplingMasksd("label", scheme, by_class=by_class),
        crop_step,
        mt.DeleteItemsd("label_sampling"),
    ]


def validation_transforms(pre: Preprocessing, scheme: LabelScheme) -> mt.Compose:
    """Preprocessing of image and label, the label as a target (whole volumes, no crops)."""
    return mt.Compose([*preprocessing(pre, with_label=True), LabelsToTargetd("label", scheme)])


def inference_transforms(pre: Preprocessing) -> mt.Compose:
    """Preprocessing of the image alone; ``Invertd`` with it maps predictions back."""
    return mt.Compose(preprocessing(pre, with_label=False))
