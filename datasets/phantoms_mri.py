"""Multi-modal brain MRI phantoms: a skull-stripped brain with a glioma, as in BraTS.

Anatomy is drawn from smooth random fields, so shapes are blobby rather than perfect
ellipsoids and a network has to learn intensity and context rather than one geometry.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

# Mean intensity per tissue and MRI sequence, in the arbitrary units of skull-stripped
# BraTS scans: oedema bright on FLAIR and T2, enhancing rim bright on T1ce, necrotic core
# dark on T1, T1ce and FLAIR, CSF dark on FLAIR (fluid-attenuated) and bright on T2.
_TISSUES = ("csf", "grey", "white", "oedema", "enhancing", "necrosis")
_MRI_INTENSITY = {
    "flair": (150, 700, 550, 1150, 900, 450),
    "t1": (250, 550, 750, 480, 600, 280),
    "t1ce": (250, 600, 780, 520, 1350, 260),
    "t2": (1400, 850, 600, 1200, 950, 1350),
}


def smooth_field(shape: tuple[int, ...], rng: np.random.Generator, scale: float) -> np.ndarray:
    """A smooth random field on ``shape`` with values in about [-1, 1] (float32).

    ``scale`` is the correlation length as a fraction of the smallest side.
    """
    coarse_shape = tuple(max(2, round(1 / scale)) + 2 for _ in shape)
    coarse = rng.standard_normal(coarse_shape).astype(np.float32)
    zoom = [s / c for s, c in zip(shape, coarse_shape, strict=True)]
    field = ndimage.zoom(coarse, zoom, order=1, mode="nearest", grid_mode=True)
    return np.clip(field / 1.5, -1.5, 1.5)


def blob(
    grid: Sequence[np.ndarray],
    centre: np.ndarray,
    radii: np.ndarray,
    wobble: np.ndarray,
) -> np.ndarray:
    """Boolean mask of an ellipsoid at ``centre`` with ``radii`` (voxels) deformed by ``wobble``.

    ``wobble`` is a field on the grid; the radius varies by its value (relative, e.g. 0.15).
    """
    distance = sum(((axis - c) / r) ** 2 for axis, c, r in zip(grid, centre, radii, strict=True))
    return np.sqrt(distance) < 1.0 + wobble


def brats_phantom(
    shape: tuple[int, ...], rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One skull-stripped brain with a glioma: (images per sequence (int16), labels (uint8)).

    Labels follow BraTS 2021: 0 background, 1 necrotic core, 2 oedema, 4 enhancing tumour.
    Images are zero outside the brain, as in the released (skull-stripped) scans.
    """
    shape_array = np.array(shape, dtype=np.float32)
    grid = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    centre = shape_array / 2 + rng.uniform(-0.03, 0.03, 3) * shape_array
    brain = blob(
        grid, centre, shape_array * [0.40, 0.44, 0.40], 0.06 * smooth_field(shape, rng, 0.3)
    )
    white = blob(
        grid, centre, shape_array * [0.31, 0.35, 0.30], 0.10 * smooth_field(shape, rng, 0.25)
    )
    csf = np.zeros(shape, dtype=bool)
    for side in (-1, 1):
        ventricle_centre = centre + np.array([side * 0.06, 0.0, 0.03]) * shape_array
        radii = shape_array * [0.035, 0.12, 0.06] * rng.uniform(0.8, 1.2)
        csf |= blob(grid, ventricle_centre, radii, 0.1 * smooth_field(shape, rng, 0.3))

    smallest = float(shape_array.min())
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    tumour_centre = centre + direction * shape_array * [0.16, 0.18, 0.14] * rng.uniform(0.4, 1.0)
    oedema_radius = smallest * rng.uniform(0.18, 0.25)
    core_radius = oedema_radius * rng.uniform(0.6, 0.75)
    necrosis_radius = core_radius * rng.uniform(0.35, 0.55)
    elongation = rng.uniform(0.85, 1.15, 3)
    oedema = blob(
        grid, tumour_centre, oedema_radius * elongation, 0.18 * smooth_field(shape, rng, 0.2)
    )
    core = blob(
        grid, tumour_centre, core_radius * elongation, 0.12 * smooth_field(shape, rng, 0.25)
    )
    necrosis = blob(
        grid, tumour_centre, necrosis_radius * elongation, 0.12 * smooth_field(shape, rng, 0.3)
    )
    oedema &= brain
    core &= oedema
    necrosis &= core

    labels = np.zeros(shape, dtype=np.uint8)
    labels[oedema] = 2
    labels[core] = 4
    labels[necrosis] = 1

    tissue = np.full(shape, 1, dtype=np.int8)  # grey matter
    tissue[white] = 2
    tissue[csf & brain] = 0
    tissue[labels == 2] = 3
    tissue[labels == 4] = 4
    tissue[labels == 1] = 5
    bias = 1.0 + 0.08 * smooth_field(shape, rng, 0.5)
    images = {}
    for sequence, means in _MRI_INTENSITY.items():
        contrast = rng.uniform(0.9, 1.1)
        image = np.asarray(means, dtype=np.float32)[tissue] * contrast
        image = ndimage.gaussian_filter(image, 0.7) * bias
        image += rng.normal(0, 0.03 * means[2], shape).astype(np.float32)
        image[~brain] = 0
        images[sequence] = np.clip(image, 0, 32767).astype(np.int16)
    return images, labels
