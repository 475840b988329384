"""Preprocessing settings fitted once on the training set and stored with the model.

nnU-Net's recipe, computed from headers (spacing) and a bounded sample of foreground
voxels (intensities), so a large training set costs one pass of reads and little memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from medseg.datasets.base import Case

VOXELS_PER_CASE = 20_000


def ras_spacing(path: Path) -> tuple[float, ...]:
    """Voxel size in mm of an image file, in the axis order it has after turning to RAS."""
    if path.name.endswith((".nii", ".nii.gz")):
        header = nib.load(path)
        zooms = header.header.get_zooms()[:3]
        world_axis = nib.io_orientation(header.affine)[: len(zooms), 0].astype(int)
        return tuple(float(zooms[axis]) for axis in np.argsort(world_axis))
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    direction = np.reshape(reader.GetDirection(), (reader.GetDimension(),) * 2)
    world_axis = np.abs(direction).argmax(axis=0)
    spacing = reader.GetSpacing()
    return tuple(float(spacing[axis]) for axis in np.argsort(world_axis))


def median_spacing(cases: Sequence[Case]) -> list[float]:
    """The median voxel size (mm, RAS axis order) of the cases' first channels."""
    spacings = np.array([ras_spacing(case.image[0]) for case in cases])
    return [round(float(s), 4) for s in np.median(spacings, axis=0)]


def foreground_intensities(cases: Sequence[Case], seed: int = 0) -> np.ndarray:
    """Up to ``VOXELS_PER_CASE`` image values (first channel) under the label of each case."""
    from monai.transforms import LoadImage

    load = LoadImage(image_only=True)
    rng = np.random.default_rng(seed)
    samples = []
    for case in cases:
        image = np.asarray(load(str(case.image[0])), dtype=np.float32)
        label = np.asarray(load(str(case.label)))
        values = image[label > 0] if label.shape == image.shape else image.ravel()
        if values.size > VOXELS_PER_CASE:
            values = rng.choice(values, VOXELS_PER_CASE, replace=False)
        samples.append(values)
    return np.concatenate(samples) if samples else np.zeros(0, dtype=np.float32)


def ct_statistics(cases: Sequence[Case], window: Sequence[float] | None = None) -> dict[str, float]:
    """CT normalisation: a Hounsfield window and the foreground mean and std inside it.

    ``window`` None takes the foreground's 0.5 and 99.5 percentiles (nnU-Net); a fixed
    window such as H-DenseUNet's [-200, 250] is kept as given. Returns ``window_low``,
    ``window_high``, ``mean`` and ``std`` (HU).
    """
    values = foreground_intensities(cases)
    if values.size == 0:
        raise ValueError("no foreground voxels to fit CT statistics on")
    low, high = window if window is not None else np.percentile(values, [0.5, 99.5])
    clipped = np.clip(values, low, high)
    return {
        "window_low": float(low),
        "window_high": float(high),
        "mean": float(clipped.mean()),
        "std": float(max(clipped.std(), 1e-3)),
    }
