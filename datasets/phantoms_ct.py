"""Abdominal CT phantoms in Hounsfield units, with liver and liver tumours, as in LiTS.

Drawn slice by slice (a 512x512x987 volume never needs more than a few slices of float
memory) from analytic organ outlines whose radii wobble with angle and height, so no two
cases share a geometry. Coordinates are fractions of the field of view: ``a`` runs across
the image towards the patient's left, ``p`` towards the posterior, and ``h`` is the height
in a 520 mm trunk (0 pelvis, 1 mid-thorax). Voxel sizes follow from a field of view of
300-480 mm and the trunk span scanned, so geometry is physically consistent at any shape
(512x512 gives LiTS's 0.6-0.94 mm in-plane). The voxel order is LPS (x to the left, y to
the back, z up), as in scanners' DICOM and in the released LiTS volumes, whose affines
have negative x and y scales.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

AIR, FAT, MUSCLE, BOWEL, LIVER = -1000.0, -100.0, 50.0, 30.0, 60.0
LUNG, BONE, MARROW, KIDNEY, SPLEEN = -850.0, 900.0, 250.0, 150.0, 50.0
VESSEL, FLUID = 165.0, 8.0
TRUNK_MM = 520.0


Wobble = tuple[tuple[float, float], ...]


@dataclass
class Organ:
    """An outline in one slice: centre (a, p), radii, and angular wobble (amplitude, phase
    per harmonic 2, 3, 4...)."""

    centre: tuple[float, float]
    radii: tuple[float, float]
    wobble: Wobble = ()


def draw(organ: Organ, a: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Boolean mask (len(a), len(p)) of the grid points inside ``organ``.

    ``a`` and ``p`` are the increasing coordinates of the grid's two axes; only the
    organ's bounding box is evaluated.
    """
    mask = np.zeros((a.size, p.size), dtype=bool)
    if min(organ.radii) <= 1e-6:
        return mask
    reach = 1.0 + sum(abs(amplitude) for amplitude, _ in organ.wobble)
    (ca, cp), (ra, rp) = organ.centre, organ.radii
    i0, i1 = np.searchsorted(a, [ca - ra * reach, ca + ra * reach])
    j0, j1 = np.searchsorted(p, [cp - rp * reach, cp + rp * reach])
    if i0 >= i1 or j0 >= j1:
        return mask
    da = ((a[i0:i1] - ca) / ra)[:, None]
    dp = ((p[j0:j1] - cp) / rp)[None, :]
    radius = np.hypot(da, dp)
    if organ.wobble:
        angle = np.arctan2(dp, da)
        limit = 1.0 + sum(
            amplitude * np.cos((k + 2) * angle + phase)
            for k, (amplitude, phase) in enumerate(organ.wobble)
        )
        mask[i0:i1, j0:j1] = radius < limit
    else:
        mask[i0:i1, j0:j1] = radius < 1.0
    return mask


def _wobble(rng: np.random.Generator, strength: float, harmonics: int = 3) -> Wobble:
    """(amplitude, phase) of each harmonic of an outline's wobble."""
    amplitudes = strength * rng.uniform(0.3, 1.0, harmonics) / np.arange(1, harmonics + 1)
    phases = rng.uniform(0, 2 * np.pi, harmonics)
    return tuple((float(a), float(f)) for a, f in zip(amplitudes, phases, strict=True))


def _profile(h: float, bottom: float, top: float) -> float:
    """Size factor of an organ spanning heights ``bottom``..``top``: 0 outside, 1 at its widest
    (two thirds of the way up, like the liver's dome)."""
    if not bottom < h < top:
        return 0.0
    peak = bottom + 2 * (top - bottom) / 3
    side = (h - peak) / (peak - bottom if h < peak else top - peak)
    return float(np.sqrt(max(0.0, 1 - side**2)))


class SmoothVolume:
    """A smooth random field (values about N(0, 1)) on the unit cube, sampled slice by slice.

    Coherent in 3D, so bowel, fat and liver texture change gradually from slice to slice,
    and cheap: a coarse grid of ``cells`` per axis, interpolated linearly.
    """

    def __init__(self, rng: np.random.Generator, cells: tuple[int, int, int]) -> None:
        self.coarse = rng.standard_normal(tuple(c + 1 for c in cells)).astype(np.float32)

    def at(self, t: float, shape: tuple[int, ...]) -> np.ndarray:
        """The field's slice at height ``t`` (0..1), resampled to ``shape`` (float32)."""
        position = t * (self.coarse.shape[2] - 1)
        below = min(int(position), self.coarse.shape[2] - 2)
        weight = position - below
        plane = (1 - weight) * self.coarse[..., below] + weight * self.coarse[..., below + 1]
        zoom = [s / c for s, c in zip(shape, plane.shape, strict=True)]
        return ndimage.zoom(plane, zoom, order=1, mode="nearest", grid_mode=True)


@dataclass
class Patient:
    """Per-case anatomy, drawn once from the case's generator."""

    heights: tuple[float, float]
    liver_span: tuple[float, float]
    liver_wobble: Wobble
    liver_centre: tuple[float, float]
    liver_hu: float
    body_wobble: Wobble
    fat_depth: float
    tumours: list[tuple[np.ndarray, float, float, Wobble]]
    vessels: list[tuple[float, float, float, float]]
    noise_hu: float
    rib_phases: np.ndarray
    bowel: SmoothVolume
    texture: SmoothVolume


def make_patient(rng: np.random.Generator) -> Patient:
    """Draw a patient: the trunk span scanned, organ placement, liver and tumour intensities,
    and 0-4 tumours (spheres of 5-35 mm radius, wobbled) inside the liver."""
    heights = (rng.uniform(0.0, 0.15), rng.uniform(0.88, 1.0))
    liver_span = (rng.uniform(0.5, 0.56), rng.uniform(0.84, 0.9))
    liver_centre = (-0.3 + rng.uniform(-0.03, 0.03), -0.04 + rng.uniform(-0.03, 0.03))
    liver_hu = LIVER + rng.uniform(-8, 8)
    tumours: list[tuple[Any, ...]] = []
    count = rng.choice([0, 1, 1, 2, 2, 3, 4])
    while len(tumours) < count:
        h = rng.uniform(liver_span[0] + 0.08, liver_span[1] - 0.06)
        size = _profile(h, *liver_span)
        centre = np.array(liver_centre) + rng.uniform(-0.55, 0.55, 2) * np.array([0.3, 0.36]) * size
        radius_mm = rng.uniform(5, 35) * min(1.0, size + 0.3)
        contrast = rng.uniform(18, 45)
        tumours.append((np.array([*centre, h]), radius_mm, liver_hu - contrast, _wobble(rng, 0.2)))
    vessels = [
        (
            rng.uniform(-0.45, -0.15),
            rng.uniform(-0.25, 0.15),
            rng.uniform(-0.2, 0.2),
            rng.uniform(0.012, 0.025),
        )
        for _ in range(rng.integers(3, 7))
    ]  # (a at h=0.5, p, drift of a per unit height, radius)
    return Patient(
        heights=heights,
        liver_span=liver_span,
        liver_wobble=_wobble(rng, 0.12),
        liver_centre=liver_centre,
        liver_hu=liver_hu,
        body_wobble=_wobble(rng, 0.04),
        fat_depth=rng.uniform(0.04, 0.12),
        tumours=tumours,
        vessels=vessels,
        noise_hu=rng.uniform(8, 18),
        rib_phases=rng.uniform(0, 2 * np.pi, 10),
        bowel=SmoothVolume(rng, (14, 14, 24)),
        texture=SmoothVolume(rng, (8, 8, 12)),
    )


def ct_slice(
    patient: Patient,
    h: float,
    z_mm: float,
    grids: tuple[np.ndarray, np.ndarray],
    extent_mm: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """One axial slice at height ``h`` (``z_mm`` along the scan): (HU float32, labels uint8).

    Labels: 0 background, 1 liver (its vessels included), 2 tumour.
    """
    a, p = grids
    hu = np.full((a.size, p.size), AIR, dtype=np.float32)
    table = np.abs(p[None, :] - 0.74 - 0.08 * a[:, None] ** 2) < 0.012
    hu[table & (np.abs(a[:, None]) < 0.9)] = 300.0
    body = draw(Organ((0.0, 0.02), (0.86, 0.66), patient.body_wobble), a, p)
    hu[body] = FAT
    depth = patient.fat_depth
    wall = draw(Organ((0.0, 0.02), (0.86 - depth, 0.66 - depth)), a, p)
    hu[wall] = MUSCLE
    inner = draw(Organ((0.0, 0.02), (0.8 - depth, 0.6 - depth)), a, p)
    t = (h - patient.heights[0]) / (patient.heights[1] - patient.heights[0])
    mottled = patient.bowel.at(t, hu.shape)
    hu[inner] = np.where(mottled[inner] > 1.0, FAT, BOWEL)
    gas = inner & (p[None, :] < 0.0) & (mottled < -1.9) & (h < 0.7)
    hu[gas] = AIR + 50
    for side in (-1, 1):
        hu[draw(Organ((side * 0.12, 0.5), (0.08, 0.1)), a, p)] = MUSCLE  # paraspinal muscles
    disc = np.sin(2 * np.pi * z_mm / 33.0) > 0.75
    vertebra = draw(Organ((0.0, 0.33), (0.1, 0.09)), a, p)
    hu[vertebra] = 80.0 if disc else BONE
    if not disc:
        hu[draw(Organ((0.0, 0.33), (0.08, 0.07)), a, p)] = MARROW
        hu[draw(Organ((0.0, 0.52), (0.025, 0.09)), a, p)] = BONE * 0.8
    for side in (-1, 1):
        hu[draw(Organ((side * 0.3, 0.28), (0.09, 0.13)), a, p) & (0.38 < h < 0.62)] = KIDNEY
    spleen_size = _profile(h, 0.6, 0.82)
    hu[draw(Organ((0.45, 0.18), (0.13 * spleen_size, 0.2 * spleen_size)), a, p)] = SPLEEN
    lung_size = np.sqrt(np.clip((h - 0.8) / 0.15, 0, 1))
    for side in (-1, 1):
        lung = draw(Organ((side * 0.4, 0.05), (0.3 * lung_size, 0.45 * lung_size)), a, p)
        hu[lung & inner] = LUNG
    if h > 0.55:
        for index, phase in enumerate(patient.rib_phases):
            angle = np.pi * (0.1 + 0.8 * index / (len(patient.rib_phases) - 1))
            if np.sin(2 * np.pi * z_mm / 22.0 + phase) > 0.2:
                centre = ((0.8 - depth) * np.cos(angle), 0.02 + (0.6 - depth) * np.sin(angle))
                centre = (centre[0], centre[1] if index % 2 else -centre[1])
                hu[draw(Organ(centre, (0.025, 0.02)), a, p)] = BONE * 0.85
    liver_size = _profile(h, *patient.liver_span)
    centre = patient.liver_centre
    liver = draw(
        Organ(centre, (0.3 * liver_size, 0.36 * liver_size), patient.liver_wobble),
        a,
        p,
    )
    if h > 0.68:
        lobe = _profile(h, 0.66, 0.92)
        liver |= draw(Organ((0.02, -0.28), (0.26 * lobe, 0.12 * lobe)), a, p)
    liver &= inner
    texture = patient.texture.at(t, hu.shape)
    hu[liver] = patient.liver_hu + 4 * texture[liver]
    for a_mid, p_vessel, drift, radius in patient.vessels:
        vessel = draw(Organ((a_mid + drift * (h - 0.5), p_vessel), (radius, radius)), a, p)
        hu[vessel & liver] = VESSEL
    tumour = np.zeros(hu.shape, dtype=bool)
    for centre3, radius_mm, tumour_hu, wobble in patient.tumours:
        dz_mm = (h - centre3[2]) * TRUNK_MM
        if abs(dz_mm) >= radius_mm:
            continue
        section_mm = np.sqrt(radius_mm**2 - dz_mm**2)
        radii = (2 * section_mm / extent_mm[0], 2 * section_mm / extent_mm[1])
        found = draw(Organ(tuple(centre3[:2]), radii, wobble), a, p) & inner
        hu[found] = tumour_hu + 3 * texture[found]
        tumour |= found
    gallbladder = draw(Organ((-0.12, -0.2), (0.06, 0.08)), a, p) & (0.5 < h < 0.6)
    hu[gallbladder] = FLUID
    hu[draw(Organ((0.04, 0.2), (0.035, 0.035)), a, p)] = VESSEL + 20  # aorta
    labels = np.zeros(hu.shape, dtype=np.uint8)
    labels[liver & ~gallbladder] = 1
    labels[tumour & ~gallbladder] = 2
    hu = ndimage.gaussian_filter(hu, 0.6)
    hu += rng.normal(0, patient.noise_hu, hu.shape).astype(np.float32)
    return hu, labels


def lits_phantom(
    shape: tuple[int, ...], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """A CT volume (int16 HU, clipped to -1024..3071), its labels (uint8 0/1/2), both indexed
    (x, y, z) in LPS voxel order, and the voxel size (x, y, z) in mm."""
    patient = make_patient(rng)
    field_of_view = rng.uniform(300, 480)
    bottom, top = patient.heights
    pixel = round(field_of_view / max(shape[:2]), 4)  # square pixels, as CT scanners make
    spacing = (pixel, pixel, round((top - bottom) * TRUNK_MM / shape[2], 3))
    extent_mm = np.asarray(shape, dtype=np.float64) * spacing
    a = np.linspace(-1, 1, shape[0], dtype=np.float32)
    p = np.linspace(-1, 1, shape[1], dtype=np.float32)
    image = np.empty(shape, dtype=np.int16)
    labels = np.empty(shape, dtype=np.uint8)
    for k in range(shape[2]):
        h = bottom + (top - bottom) * k / max(shape[2] - 1, 1)
        hu, labels[..., k] = ct_slice(patient, h, k * spacing[2], (a, p), extent_mm, rng)
        image[..., k] = np.clip(np.rint(hu), -1024, 3071)
    return image, labels, spacing
