"""MONAI image readers for the formats MONAI reads only through the ``itk`` package, or not at all.

``SimpleITKReader`` reads every SimpleITK format (MetaImage, NRRD, DICOM files and series
folders, and the rest) and ``TiffReader`` multi-page TIFF stacks. Both return what MONAI's
``NibabelReader`` returns for the same data: arrays indexed (x, y[, z]) with channels last,
a 4x4 voxel-to-RAS+ affine in mm under ``affine`` and ``original_affine``, ``spatial_shape``
and ``original_channel_dim`` (NaN for one channel, -1 for channels last), so every later
transform sees one convention whatever the file format. ``image_readers()`` is the list for
``LoadImaged(reader=...)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import tifffile
from monai.data import ImageReader, NibabelReader, PILReader
from monai.utils import MetaKeys, SpaceKeys

from medseg.datasets.headers import (
    diagonal_affine,
    itk_affine,
    read_dicom_series,
    tiff_axes,
    tiff_spacing,
)
from medseg.datasets.image_io import ITK_SUFFIXES, TIFF_SUFFIXES, suffix_of


def _names(data: Sequence[Any] | Any) -> list[str]:
    return [str(data)] if isinstance(data, (str, Path)) else [str(name) for name in data]


def _meta(array: np.ndarray, affine: np.ndarray, spatial_rank: int) -> dict[str, Any]:
    return {
        MetaKeys.AFFINE: affine.copy(),
        MetaKeys.ORIGINAL_AFFINE: affine.copy(),
        MetaKeys.SPATIAL_SHAPE: np.asarray(array.shape[:spatial_rank]),
        MetaKeys.SPACE: SpaceKeys.RAS,
        MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan") if array.ndim == spatial_rank else -1,
        "spacing": np.sqrt((affine[:3, :3] ** 2).sum(axis=0))[:spatial_rank],
    }


def _stack(items: list[tuple[np.ndarray, dict[str, Any]]]) -> tuple[np.ndarray, dict[str, Any]]:
    """One image as it is; several (one per channel) stacked on a new first axis."""
    array, meta = items[0]
    if len(items) == 1:
        return array, meta
    for other, other_meta in items[1:]:
        if other.shape != array.shape or not np.allclose(
            other_meta[MetaKeys.AFFINE], meta[MetaKeys.AFFINE], atol=1e-4
        ):
            raise ValueError("channel files differ in shape or affine; cannot stack them")
    meta = dict(meta) | {MetaKeys.ORIGINAL_CHANNEL_DIM: 0}
    return np.stack([array for array, _ in items]), meta


class SimpleITKReader(ImageReader):
    """Reads any format SimpleITK reads; a folder is a DICOM series (the largest, when the
    folder holds several). A list of files is stacked as channels (first axis).

    Arrays come back indexed (x, y[, z][, component]) in the file's own dtype, the affine
    in RAS+ (ITK's LPS with x and y negated), as ``NibabelReader`` gives them.
    """

    def verify_suffix(self, filename: Sequence[Any] | Any) -> bool:
        """True when every name is a DICOM folder or has an ITK suffix (.mha, .nrrd, ...)."""
        return all(Path(n).is_dir() or suffix_of(Path(n)) in ITK_SUFFIXES for n in _names(filename))

    def read(self, data: Sequence[Any] | Any, **kwargs: Any) -> sitk.Image | list[sitk.Image]:
        """The SimpleITK image of each name (a list when given several)."""
        images = [
            read_dicom_series(Path(n)) if Path(n).is_dir() else sitk.ReadImage(n)
            for n in _names(data)
        ]
        return images if len(images) > 1 else images[0]

    def get_data(self, img: sitk.Image | list[sitk.Image]) -> tuple[np.ndarray, dict[str, Any]]:
        """``(array, meta)``: see the class docstring."""
        items = []
        for image in img if isinstance(img, list) else [img]:
            rank = image.GetDimension()
            array = sitk.GetArrayFromImage(image)
            # SimpleITK indexes (z, y, x[, component]); reversing the spatial axes gives a
            # Fortran-ordered view in (x, y, z) order, as nibabel returns, without a copy.
            order = [*reversed(range(rank)), *range(rank, array.ndim)]
            array = array.transpose(order)
            affine = itk_affine(image.GetDirection(), image.GetSpacing(), image.GetOrigin())
            items.append((array, _meta(array, affine, min(rank, 3))))
        return _stack(items)


@dataclass
class TiffStack:
    """A TIFF's pixels as (x, y[, z][, channel]), how many axes are spatial (2 or 3), and
    its voxel size (x, y, z) in mm."""

    array: np.ndarray
    spatial_rank: int
    spacing: tuple[float, float, float]


class TiffReader(ImageReader):
    """Reads TIFF images and multi-page stacks with tifffile.

    Pages become the z axis, samples (RGB) or ImageJ channels the last axis: a 30-page
    512x512 stack gives (512, 512, 30). The voxel size comes from the resolution tags and
    ImageJ metadata, and is 1 where the file states none.
    """

    def verify_suffix(self, filename: Sequence[Any] | Any) -> bool:
        """True when every name ends in .tif or .tiff."""
        return all(suffix_of(Path(n)) in TIFF_SUFFIXES for n in _names(filename))

    def read(self, data: Sequence[Any] | Any, **kwargs: Any) -> TiffStack | list[TiffStack]:
        """The pixels and spacing of each name (a list when given several)."""
        stacks = []
        for name in _names(data):
            with tifffile.TiffFile(name) as tif:
                series = tif.series[0]
                spatial, channel = tiff_axes(series.axes)
                order = spatial + ([] if channel is None else [channel])
                array = series.asarray().transpose(order)
                stacks.append(TiffStack(array, len(spatial), tiff_spacing(tif)))
        return stacks if len(stacks) > 1 else stacks[0]

    def get_data(self, img: TiffStack | list[TiffStack]) -> tuple[np.ndarray, dict[str, Any]]:
        """``(array, meta)`` with a diagonal affine of the stack's spacing."""
        items = []
        for stack in img if isinstance(img, list) else [img]:
            affine = diagonal_affine(stack.spacing[: stack.spatial_rank])
            items.append((stack.array, _meta(stack.array, affine, stack.spatial_rank)))
        return _stack(items)


def image_readers() -> list[ImageReader]:
    """Readers for ``LoadImaged(reader=image_readers())``, most specific last.

    Given readers, MONAI tries them last to first and keeps the first that opens the file:
    nibabel for NIfTI, tifffile for TIFF (before Pillow, which would open a stack's first
    page only), Pillow for PNG/JPEG/BMP, and SimpleITK for everything else.
    """
    return [SimpleITKReader(), PILReader(), TiffReader(), NibabelReader()]
