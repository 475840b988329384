"""Per-case label statistics that need no reference: what ``statistics.csv`` holds.

For each structure of a written label map (``structures``): its voxel count and volume,
the mean and standard deviation of the image's first channel inside it (on the image's own
grid, as read), its connected components (scikit-image ``measure.label`` with full
connectivity: 26 neighbours in 3D, 8 in 2D, as the BraTS lesion-wise metrics count them),
the largest one's size and centre, and its bounding box in voxel indices.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from medseg.pipelines.evaluation.metrics import bounding_box, structure_mask
from medseg.pipelines.structures import Structure

AXES = ("x", "y", "z")
COLUMNS = (
    "case",
    "label",
    "value",
    "voxels",
    "volume_ml",
    "area_mm2",
    "intensity_mean",
    "intensity_std",
    "components",
    "largest_component_voxels",
    "largest_component_ml",
    "largest_component_mm2",
    *(f"bbox_{end}_{axis}" for axis in AXES for end in ("min", "max")),
)
"""Columns of ``statistics.csv``, in order."""


def label_statistics(
    labels: np.ndarray,
    structures: Sequence[Structure],
    spacing: Sequence[float] | None,
    image: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """Statistics of every structure in ``labels``, one dict per structure in order.

    ``labels``: integer label map (2D or 3D, file index order); ``spacing``: its voxel size
    in mm per axis, None where the grid has none (a photo); ``image``: the first image
    channel on the same grid (None: intensity fields empty).

    Each dict holds ``label``, ``value``, ``voxels``; ``volume_ml`` and
    ``largest_component_ml`` for 3D grids, ``area_mm2`` and ``largest_component_mm2`` for
    2D grids with a spacing (None otherwise); ``intensity_mean`` / ``intensity_std``
    (population std) over the structure's finite voxels (None when there are none, or no
    image);
    ``components`` and ``largest_component_voxels``; ``bbox_min_<axis>`` /
    ``bbox_max_<axis>`` (inclusive voxel indices, None when empty) and
    ``largest_component_centre`` (voxel indices of its centroid, None when empty).
    """
    labels = np.asarray(labels)
    if image is not None and image.shape != labels.shape:
        raise ValueError(f"image shape {image.shape} differs from the labels' {labels.shape}")
    # One pass over the volume finds the box of all structures; each structure is then
    # measured inside its own box within it.
    outer = bounding_box(structure_mask(labels, [s.value for s in structures]))
    unit_size = _unit_size(labels.ndim, spacing)
    rows = []
    for structure in structures:
        mask, box = np.zeros((0,) * labels.ndim, dtype=bool), None
        if outer is not None:
            inner = bounding_box(labels[outer] == structure.value)
            if inner is not None:
                box = tuple(
                    slice(o.start + i.start, o.start + i.stop)
                    for o, i in zip(outer, inner, strict=True)
                )
                mask = labels[box] == structure.value
        rows.append(_structure_row(structure, mask, box, image, labels.ndim, unit_size))
    return rows


def _unit_size(ndim: int, spacing: Sequence[float] | None) -> float | None:
    """Size of one voxel in the reported unit: ml for 3D, mm^2 for 2D; None without spacing."""
    if spacing is None:
        return None
    size = math.prod(float(s) for s in spacing[:ndim])
    return size / 1000.0 if ndim == 3 else size


def _structure_row(
    structure: Structure,
    mask: np.ndarray,
    box: tuple[slice, ...] | None,
    image: np.ndarray | None,
    ndim: int,
    unit_size: float | None,
) -> dict[str, Any]:
    from scipy import ndimage
    from skimage.measure import label

    voxels = int(np.count_nonzero(mask))
    components, largest, centre = 0, 0, None
    mean = std = None
    # ``box`` is None only for an empty structure.
    if voxels and box is not None:
        numbered, components = label(mask, connectivity=ndim, return_num=True)
        # One count of every component's voxels; a fragmented prediction has thousands,
        # and asking each region for its size costs a pass over its box apiece.
        sizes = np.bincount(numbered.reshape(-1, order="A"))
        sizes[0] = 0
        biggest = int(np.argmax(sizes))
        largest = int(sizes[biggest])
        # regionprops' centroid lists every voxel's coordinates first: seconds for a
        # liver-sized component, where the centre of mass of its mask is one pass.
        centroid = ndimage.center_of_mass(numbered == biggest)
        centre = [round(float(c) + s.start, 1) for c, s in zip(centroid, box, strict=True)]
        if image is not None:
            inside = image[box][mask].astype(np.float64)
            inside = inside[np.isfinite(inside)]
            if inside.size:
                mean, std = float(inside.mean()), float(inside.std())
    row: dict[str, Any] = {
        "label": structure.name,
        "value": structure.value,
        "voxels": voxels,
        "intensity_mean": mean,
        "intensity_std": std,
        "components": int(components),
        "largest_component_voxels": largest,
        "largest_component_centre": centre,
    }
    volume = largest_volume = area = largest_area = None
    if unit_size is not None and ndim == 3:
        volume, largest_volume = voxels * unit_size, largest * unit_size
    elif unit_size is not None:
        area, largest_area = voxels * unit_size, largest * unit_size
    row |= {
        "volume_ml": volume,
        "largest_component_ml": largest_volume,
        "area_mm2": area,
        "largest_component_mm2": largest_area,
    }
    for axis in range(3):
        low = high = None
        if box is not None and axis < ndim:
            low, high = box[axis].start, box[axis].stop - 1
        row[f"bbox_min_{AXES[axis]}"], row[f"bbox_max_{AXES[axis]}"] = low, high
    return row


def largest_structure_centre(rows: Iterable[Mapping[str, Any]]) -> tuple[int, ...] | None:
    """Voxel index (rounded) of the centre of the largest component of the structure with
    the most voxels among ``rows`` (one case's), None when every structure is empty."""
    filled = [row for row in rows if row["voxels"]]
    if not filled:
        return None
    largest = max(filled, key=lambda row: row["voxels"])
    return tuple(round(c) for c in largest["largest_component_centre"])


def printable(text: str) -> str:
    """``text`` with the undecodable bytes of a file name (surrogates) written as
    ``\\udcXX``, so that it can be stored as UTF-8."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def statistics_csv(rows: Iterable[Mapping[str, Any]]) -> str:
    """CSV text of ``rows`` (each with ``case`` and the fields of ``label_statistics``):
    ``COLUMNS``, empty cells for None, floats as Python writes them, case ids and names
    ``printable``."""
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, fieldnames=COLUMNS, lineterminator="\n", extrasaction="ignore", restval=""
    )
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {
                key: "" if value is None else printable(value) if isinstance(value, str) else value
                for key, value in row.items()
            }
        )
    return buffer.getvalue()
