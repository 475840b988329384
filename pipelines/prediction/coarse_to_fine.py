"""Coarse-to-fine inference: find the foreground on a downsampled volume, then run the
full-resolution sliding window only over a box around it; the rest is background.

The coarse pass is the same model on the preprocessed volume downsampled ``factor`` times
per axis (``factor**3`` fewer voxels and windows in 3D): it works for every network, not
only UNet++, and it only has to place a box. The box is the coarse foreground's bounding
box widened by one coarse voxel (the coarse pass cannot place an edge more finely) and
the margin. The fine pass runs the fewest consecutive windows of the full pass's grid that
cover the box (the crop starts and ends on that grid), so wherever every window of the
full pass over a voxel lies inside the crop, the probabilities equal the full pass's.
What the model's postprocessing would remove from the output (all but the largest
component of a liver, say) places no box, and a connected component much smaller than the
largest one of the same structure is a speck and is left out of the box and of the edge
check; a small structure of its own (a gallbladder beside a liver) is not. When the coarse
pass finds nothing, or the fine foreground reaches a face of the crop inside the volume
(the structure goes on beyond the box), the full pass runs instead.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from medseg.datasets.base import LabelScheme
from medseg.pipelines.inference import plain_tensor
from medseg.pipelines.model_dir import Postprocessing
from medseg.pipelines.prediction.postprocess import postprocess
from medseg.transforms.labels import paint_labels

logger = logging.getLogger(__name__)


def window_aligned_range(
    size: int, window: int, overlap: float, low: int, high: int
) -> tuple[int, int]:
    """``(start, stop)`` along one axis of ``size`` voxels: the fewest consecutive windows
    of a sliding pass (MONAI's grid for ``window`` and ``overlap``) that cover voxels
    ``low:high``, from the first window's start to the last one's end. An axis no longer
    than the window is taken whole."""
    from monai.data.utils import dense_patch_slices

    if size <= window:
        return 0, size
    step = max(int(window * (1 - overlap)), 1)
    starts = [int(part.start) for (part,) in dense_patch_slices((size,), (window,), (step,))]
    first = max(start for start in starts if start <= low)
    last = min(start for start in starts if start + window >= high)
    return first, max(last, first) + window


def main_components(mask: torch.Tensor, share: float = 0.1) -> torch.Tensor:
    """``mask`` (boolean) without the connected components smaller than ``share`` of the
    largest: a stray false-positive speck would otherwise stretch the box over the volume
    (one structure or several of a similar size, such as two kidneys, are kept)."""
    from scipy import ndimage

    components, count = ndimage.label(mask.numpy())
    if count <= 1:
        return mask
    sizes = np.bincount(components.ravel())[1:]
    kept = np.flatnonzero(sizes >= share * sizes.max()) + 1
    return torch.from_numpy(np.isin(components, kept))


def foreground(
    probability: torch.Tensor,
    scheme: LabelScheme,
    rules: Postprocessing | None = None,
    voxel_ml: float = 0.0,
) -> torch.Tensor:
    """Boolean ``(*spatial)``: the voxels of probabilities ``(C, *spatial)`` that the label
    map keeps as any structure after the model's postprocessing ``rules`` (None: none; a
    component the output would drop, such as all but the largest liver, needs no box;
    ``voxel_ml`` is one voxel's volume in ml), without each structure's specks
    (``main_components`` per structure, so a small structure is judged against its own
    kind, never against a large neighbour)."""
    labels = paint_labels(probability, scheme)
    if rules is not None:
        labels = postprocess(labels, scheme, rules, voxel_ml)
    kept = torch.zeros(labels.shape, dtype=torch.bool)
    for values in scheme.foreground.values():
        mask = torch.from_numpy(np.isin(labels, values))
        if mask.any():
            kept |= main_components(mask)
    return kept


def background(channels: int, spatial: Sequence[int], scheme: LabelScheme) -> torch.Tensor:
    """Probabilities ``(channels, *spatial)`` float32 of pure background: every region 0; for
    classes, the background class 1 and the others 0."""
    probability = torch.zeros(channels, *spatial)
    if scheme.mode == "classes":
        probability[0] = 1.0
    return probability


@dataclass(frozen=True)
class FineRegion:
    """Where the fine pass ran, as slices of the full grid: ``box`` is the coarse
    foreground's bounding box widened by one coarse voxel and the margin, ``crop`` the
    fewest whole windows of the full pass's grid that cover it (what the fine pass ran on;
    it holds ``box``)."""

    box: tuple[slice, ...]
    crop: tuple[slice, ...]


@dataclass(frozen=True)
class CoarseToFine:
    """Settings: ``factor`` (downsampling per axis of the coarse pass, >= 2),
    ``margin_mm`` (added around the coarse foreground's bounding box, in mm) and the
    model's postprocessing ``rules`` the output will get (None: none)."""

    factor: int = 2
    margin_mm: float = 10.0
    rules: Postprocessing | None = None

    def crop(
        self,
        coarse: torch.Tensor,
        spatial: Sequence[int],
        spacing: Sequence[float],
        window: Sequence[int],
        overlap: float,
    ) -> FineRegion | None:
        """The fine pass's region of the full grid ``spatial`` (voxels of ``spacing`` mm),
        from the coarse foreground mask ``coarse`` (boolean, the downsampled grid): its
        bounding box scaled up and widened by one coarse voxel and the margin, and the
        fewest sliding windows (``window``, ``overlap``) of the full grid that cover that.
        None when ``coarse`` holds no foreground."""
        found = torch.nonzero(coarse)
        if not len(found):
            return None
        box, crop = [], []
        for axis, (size, mm, width) in enumerate(zip(spatial, spacing, window, strict=True)):
            scale = size / coarse.shape[axis]
            margin = math.ceil(scale) + math.ceil(self.margin_mm / mm)
            low = max(math.floor(int(found[:, axis].min()) * scale) - margin, 0)
            high = min(math.ceil((int(found[:, axis].max()) + 1) * scale) + margin, size)
            box.append(slice(low, high))
            crop.append(slice(*window_aligned_range(size, width, overlap, low, high)))
        return FineRegion(tuple(box), tuple(crop))

    def downsample(self, image: torch.Tensor, window: Sequence[int]) -> torch.Tensor:
        """``image`` ``(1, C, *spatial)`` shrunk ``factor`` times (linear interpolation) on
        each axis the window spans more than one voxel of (not the slice axis of a 2D
        network run slice by slice)."""
        spatial = image.shape[2:]
        size = [
            max(math.ceil(length / self.factor), 1) if width > 1 else length
            for length, width in zip(spatial, window, strict=True)
        ]
        mode = "trilinear" if len(spatial) == 3 else "bilinear"
        return F.interpolate(image, size=size, mode=mode, align_corners=False)

    def probabilities(
        self,
        image: torch.Tensor,
        predict: Callable[[torch.Tensor], torch.Tensor],
        scheme: LabelScheme,
        window: Sequence[int],
        overlap: float,
        spacing: Sequence[float],
    ) -> tuple[torch.Tensor, FineRegion | None]:
        """Probabilities ``(C_out, *spatial)`` for ``image`` ``(1, C_in, *spatial)`` and
        where the fine pass ran (None: the full pass ran). Wherever every full-pass window
        over a voxel lies inside the region's ``crop`` they equal the full pass's (for one
        network without mirroring); outside the crop they are background. ``predict`` maps
        a ``(1, C_in, *s)`` image to probabilities ``(C_out, *s)`` with sliding windows of
        ``window`` (the slice axis included, as 1) at ``overlap``; ``spacing`` is the
        image's voxel size in mm per axis."""
        plain = plain_tensor(image)
        spatial = tuple(plain.shape[2:])
        small = self.downsample(plain, window)
        coarse_mm = [mm * n / m for mm, n, m in zip(spacing, spatial, small.shape[2:], strict=True)]
        coarse = foreground(predict(small), scheme, self.rules, math.prod(coarse_mm) / 1000)
        region = self.crop(coarse, spatial, spacing, window, overlap)
        if region is None:
            logger.info("coarse-to-fine: the coarse pass found no foreground; full pass")
            return predict(image), None
        inside = (slice(None), slice(None), *region.crop)
        fine = predict(plain[inside])
        voxel_ml = math.prod(spacing) / 1000
        if _reaches_inner_edge(
            foreground(fine, scheme, self.rules, voxel_ml), region.crop, spatial
        ):
            logger.info("coarse-to-fine: the foreground reaches the box's edge; full pass")
            return predict(image), None
        share = math.prod(r.stop - r.start for r in region.crop) / math.prod(spatial)
        logger.info(
            "coarse-to-fine: fine pass on %s of %s (%.0f%% of the voxels)",
            [(r.start, r.stop) for r in region.crop],
            list(spatial),
            100 * share,
        )
        probability = background(fine.shape[0], spatial, scheme)
        channels_inside = (slice(None), *region.crop)
        probability[channels_inside] = fine
        return probability, region


def _reaches_inner_edge(
    mask: torch.Tensor, region: Sequence[slice], spatial: Sequence[int]
) -> bool:
    """Whether foreground ``mask`` (the crop's grid) touches a face of the crop that lies
    inside the image (not on the image's own border)."""
    for axis, (part, size) in enumerate(zip(region, spatial, strict=True)):
        if part.start > 0 and mask.select(axis, 0).any():
            return True
        if part.stop < size and mask.select(axis, mask.shape[axis] - 1).any():
            return True
    return False
