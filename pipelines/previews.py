"""QC pictures of a label map on its image: ``medseg predict --preview`` and the overlays of
``medseg evaluate`` draw with ``draw_preview``.

A volume is turned to RAS+ index order with the affine first (nibabel's
``io_orientation``), so inputs stored LPS, RAS or any other way look the same, and shown in
the radiological convention: axial with anterior up and the patient's right on the
picture's left, coronal with superior up and the right on the left, sagittal with superior
up and anterior on the left. Three orthogonal slices pass through one voxel (by default the
centre of the largest structure). A 2D image is shown as stored (row = second axis), in
colour when it has three channels. Grey images are windowed: CT to the model's window,
anything else to its 0.5-99.5th percentiles. Each structure's outline
(``skimage.segmentation.find_boundaries``, inside the structure) is drawn in its colour,
with a legend of names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.files import write_atomic
from medseg.pipelines.structures import Structure

PANEL_NAMES = ("axial", "coronal", "sagittal")
# Hounsfield window shown for CT when no model says otherwise: soft tissue, W 400 / L 40.
SOFT_TISSUE_WINDOW = (-160.0, 240.0)


@dataclass(frozen=True)
class Panel:
    """One picture of a slice: ``pixels`` (rows top to bottom, columns left to right; a
    third axis of 3 for colour), ``aspect`` (height / width of one pixel) and ``name``."""

    name: str
    pixels: np.ndarray
    aspect: float


def ras_volume(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``array`` (x, y, z[, channels], file index order) turned to RAS+ index order by its
    4x4 voxel-to-RAS ``affine``; returns ``(view, orientation, spacing)``: nibabel's
    orientation array (input axis -> output axis, flip) and the voxel size per RAS axis."""
    import nibabel as nib
    from nibabel.affines import voxel_sizes

    orientation = nib.io_orientation(affine)
    spacing = np.zeros(3)
    sizes = voxel_sizes(affine)
    for axis, (target, _) in enumerate(orientation):
        spacing[int(target)] = sizes[axis]
    return nib.apply_orientation(array, orientation), orientation, spacing


def ras_index(
    index: Sequence[int], shape: Sequence[int], orientation: np.ndarray
) -> tuple[int, ...]:
    """A voxel index of the stored array (``shape``) as an index of its RAS+ view."""
    moved = [0, 0, 0]
    for axis, (target, flip) in enumerate(orientation):
        moved[int(target)] = shape[axis] - 1 - int(index[axis]) if flip < 0 else int(index[axis])
    return tuple(moved)


def radiological_panels(
    volume: np.ndarray, spacing: Sequence[float], centre: Sequence[int]
) -> list[Panel]:
    """Axial, coronal and sagittal slices through ``centre`` of a RAS+ ``volume`` (see
    ``ras_volume``; a trailing channel axis is kept), in the radiological convention of the
    module docstring; ``spacing`` is the voxel size per RAS axis."""
    i, j, k = (int(np.clip(c, 0, size - 1)) for c, size in zip(centre, volume.shape, strict=False))
    slices = {
        "axial": (volume[:, :, k], (0, 1)),
        "coronal": (volume[:, j, :], (0, 2)),
        "sagittal": (volume[i, :, :], (1, 2)),
    }
    panels = []
    for name in PANEL_NAMES:
        plane, (columns, rows) = slices[name]
        # Reversing both in-plane axes puts the larger R, A or S index first; transposing
        # makes the second axis the rows. For all three planes this is the convention.
        pixels = np.swapaxes(plane[::-1, ::-1], 0, 1)
        panels.append(Panel(name, pixels, float(spacing[rows] / spacing[columns])))
    return panels


def grid_panels(
    array: np.ndarray, shape: Sequence[int], affine: np.ndarray, centre: Sequence[int] | None
) -> list[Panel]:
    """The panels of ``array`` on a grid of spatial ``shape`` (a trailing channel axis is
    kept): a 2D grid gives one panel as stored, a 3D grid the three radiological slices
    through ``centre`` (stored voxel index; None: the middle), oriented by ``affine``."""
    if len(shape) == 2:
        return [Panel("image", np.swapaxes(array, 0, 1), 1.0)]
    view, orientation, spacing = ras_volume(array, affine)
    stored = [size // 2 for size in shape] if centre is None else centre
    return radiological_panels(
        view, [float(size) for size in spacing], ras_index(stored, shape, orientation)
    )


def display_window(image: np.ndarray, window: tuple[float, float] | None) -> tuple[float, float]:
    """``window`` when given, else the 0.5th and 99.5th percentiles of ``image`` (a strided
    sample of at most about a million voxels)."""
    if window is not None:
        return float(window[0]), float(window[1])
    flat = np.asarray(image).reshape(-1)
    sample = flat[:: max(1, flat.size // 1_000_000)].astype(np.float64)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(sample, (0.5, 99.5))
    return float(low), float(max(high, low + 1e-6))


def draw_preview(
    target: Path,
    image: np.ndarray | None,
    affine: np.ndarray,
    layers: Sequence[tuple[str, np.ndarray]],
    structures: Sequence[Structure],
    *,
    centre: Sequence[int] | None = None,
    window: tuple[float, float] | None = None,
    title: str = "",
) -> Path:
    """Write a PNG (atomically) of each label map of ``layers`` (``(row title, labels)``,
    one row each) outlined on ``image`` and return ``target``.

    ``image`` and the labels share one grid: 2D (x, y) or (x, y, 3) for colour, or 3D
    (x, y, z) with ``affine`` its 4x4 voxel-to-RAS matrix; None draws on black. ``centre``
    is the stored voxel index the three slices of a volume pass through (None: the middle);
    ``window`` the grey range shown (None: percentiles, see ``display_window``).
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    shape = layers[0][1].shape
    colour = image is not None and image.ndim == len(shape) + 1 and image.shape[-1] == 3
    if image is None:
        image = np.zeros(shape, dtype=np.float32)
    elif image.ndim == len(shape) + 1 and not colour:
        image = image[..., 0]
    background = grid_panels(image, shape, affine, centre)
    if colour:
        low, high = 0.0, 255.0 if image.dtype == np.uint8 else max(float(np.nanmax(image)), 1.0)
    else:
        low, high = display_window(image, window)
    high = max(high, low + 1e-6)
    columns = len(background)
    height = 3.2 * len(layers) + 0.9
    figure = Figure(figsize=(3.2 * columns, height))
    # Fixed margins (title above, legend below): a layout engine measured every artist
    # first and took half the drawing time.
    figure.subplots_adjust(
        left=0.01, right=0.99, top=1 - 0.5 / height, bottom=0.45 / height, hspace=0.12
    )
    grid = figure.subplots(len(layers), columns, squeeze=False)
    for row, (row_title, labels) in enumerate(layers):
        outlines = grid_panels(labels, shape, affine, centre)
        for axes, picture, outline in zip(grid[row], background, outlines, strict=True):
            pixels = np.clip((picture.pixels.astype(np.float32) - low) / (high - low), 0, 1)
            axes.imshow(
                pixels,
                cmap=None if colour else "gray",
                vmin=0,
                vmax=1,
                aspect=picture.aspect,
                interpolation="nearest",
            )
            axes.imshow(_outlines(outline.pixels, structures), aspect=picture.aspect)
            axes.set_title(f"{row_title} {picture.name}" if columns > 1 else row_title)
            axes.set_axis_off()
    handles = [Patch(color=s.colour, label=f"{s.value} {s.name}") for s in structures]
    if handles:
        figure.legend(handles=handles, loc="lower center", ncols=min(len(handles), 5))
    if title:
        figure.suptitle(title)
    return write_atomic(target, lambda path: figure.savefig(path, format="png", dpi=80))


def _outlines(labels: np.ndarray, structures: Sequence[Structure]) -> np.ndarray:
    """RGBA picture (rows, columns, 4) of each structure's inner boundary in its colour,
    transparent elsewhere."""
    from matplotlib.colors import to_rgba
    from skimage.segmentation import find_boundaries

    overlay = np.zeros((*labels.shape, 4), dtype=np.float32)
    for structure in structures:
        mask = labels == structure.value
        if mask.any():
            overlay[find_boundaries(mask, mode="inner")] = to_rgba(structure.colour)
    return overlay
