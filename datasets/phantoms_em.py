"""Serial-section EM phantoms of neural tissue, as in ISBI 2012: cells, membranes, organelles.

Each neurite is a seed that drifts slowly from section to section (some start or end
inside the stack, as branches do); a section's cells are the Voronoi regions of the
seeds, with boundaries bent by a smooth displacement field. Membranes are dark on bright
cytoplasm; mitochondria and vesicles are dark too but lie inside cells and are labelled
cell, so a network must learn shape and context, not just darkness. Blur, noise and
per-section brightness changes follow.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def _section_cells(
    seeds: np.ndarray, alive: np.ndarray, shape: tuple[int, ...], warp: np.ndarray
) -> np.ndarray:
    """Cell index (int32, ``shape``) of each pixel: its nearest living seed, after ``warp``."""
    marker = np.zeros(shape, dtype=np.int32)
    positions = np.clip(np.rint(seeds).astype(int), 0, np.array(shape) - 1)
    for index in np.flatnonzero(alive):
        marker[tuple(positions[index])] = index + 1
    nearest = ndimage.distance_transform_edt(
        marker == 0, return_distances=False, return_indices=True
    )
    cells = marker[tuple(nearest)]
    grid = np.indices(shape, dtype=np.float32)
    return ndimage.map_coordinates(cells, grid + warp, order=0, mode="nearest")


def _boundaries(cells: np.ndarray) -> np.ndarray:
    """Pixels whose right or lower neighbour belongs to another cell (and those neighbours)."""
    edge = np.zeros(cells.shape, dtype=bool)
    differs_x = cells[1:, :] != cells[:-1, :]
    differs_y = cells[:, 1:] != cells[:, :-1]
    edge[1:, :] |= differs_x
    edge[:-1, :] |= differs_x
    edge[:, 1:] |= differs_y
    edge[:, :-1] |= differs_y
    return edge


def _organelles(
    cells: np.ndarray, membrane: np.ndarray, rng: np.random.Generator, size: float
) -> np.ndarray:
    """Mask of mitochondria and vesicles: dark blobs kept off the membranes."""
    shape = np.array(cells.shape)
    mask = np.zeros(cells.shape, dtype=bool)
    clear = ndimage.binary_dilation(membrane, iterations=max(2, round(size / 8)))
    for _ in range(rng.poisson(cells.size / (size * size) * 0.8)):
        centre = rng.uniform(0, 1, 2) * shape
        radii = size * rng.uniform(0.06, 0.2, 2)
        angle = rng.uniform(0, np.pi)
        low = np.clip(np.floor(centre - radii.max()), 0, shape).astype(int)
        high = np.clip(np.ceil(centre + radii.max()) + 1, 0, shape).astype(int)
        du, dv = np.ogrid[low[0] : high[0], low[1] : high[1]]
        du, dv = du - centre[0], dv - centre[1]
        u = (du * np.cos(angle) + dv * np.sin(angle)) / radii[0]
        v = (-du * np.sin(angle) + dv * np.cos(angle)) / radii[1]
        mask[low[0] : high[0], low[1] : high[1]] |= u**2 + v**2 < 1
    vesicles = rng.uniform(size=shape) < 0.0015
    mask |= ndimage.binary_dilation(vesicles, iterations=1)
    return mask & ~clear


def isbi_phantom(shape: tuple[int, ...], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An EM stack (uint8) and its labels (uint8: 0 membrane, 255 cell), both (x, y, sections).

    The default ISBI size is 512x512x30; cells are about an eighth of the section wide.
    """
    plane = shape[:2]
    size = float(np.clip(min(plane) / 8, 10, 70))  # mean cell diameter, pixels
    count = max(4, int(np.prod(plane) / (size * size) * 1.3))
    seeds = rng.uniform(0, 1, (count, 2)) * plane
    velocity = rng.normal(0, size * 0.05, (count, 2))
    start = np.where(rng.uniform(size=count) < 0.15, rng.integers(0, shape[2], count), 0)
    end = np.where(rng.uniform(size=count) < 0.15, rng.integers(0, shape[2] + 1, count), shape[2])
    thickness = max(1, round(min(plane) / 200))
    knots = max(3, round(min(plane) / size * 1.2))
    coarse_warp = rng.normal(0, size * 0.15, (2, knots, knots, max(2, shape[2] // 8 + 2)))
    zoom = (1, plane[0] / knots, plane[1] / knots, shape[2] / coarse_warp.shape[3])
    warp = ndimage.zoom(coarse_warp, zoom, order=1, grid_mode=True, mode="nearest")
    image = np.empty(shape, dtype=np.uint8)
    labels = np.empty(shape, dtype=np.uint8)
    brightness = rng.uniform(165, 205, count + 1)
    for k in range(shape[2]):
        alive = (start <= k) & (k < end)
        alive[: min(4, count)] = True
        cells = _section_cells(seeds + k * velocity, alive, plane, warp[..., k])
        membrane = _boundaries(cells)
        if thickness > 1:
            membrane = ndimage.binary_dilation(membrane, iterations=thickness - 1)
        labels[..., k] = np.where(membrane, 0, 255)
        section = brightness[cells].astype(np.float32)
        texture = ndimage.gaussian_filter(rng.normal(0, 1, plane).astype(np.float32), 2.0)
        section += 60 * texture
        section[_organelles(cells, membrane, rng, size)] = rng.uniform(80, 110)
        section[ndimage.binary_dilation(membrane, iterations=1)] = rng.uniform(40, 70)
        section = ndimage.gaussian_filter(section, rng.uniform(0.8, 1.4))
        section = section * rng.uniform(0.9, 1.1) + rng.normal(0, 10, plane)
        image[..., k] = np.clip(section, 0, 255).astype(np.uint8)
    return image, labels
