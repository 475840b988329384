"""Dermoscopy phantoms, as in ISIC 2018: skin of varied tone with one pigmented lesion.

The lesion has an irregular border (radius wobbling with angle), uneven pigment (darker
globules, a bluish veil in some) and a soft edge; distractors a network must learn to
ignore surround it: hairs that cross the lesion, the dark vignette of the dermatoscope's
round field, and uneven lighting. The mask is the lesion alone (hairs included), 255 on
the lesion and 0 elsewhere, as in the released ground truth.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

# Skin tones (RGB) from light to dark, and the pigment a lesion multiplies them by.
_SKIN = np.array([[236, 196, 178], [222, 170, 146], [196, 140, 110], [160, 110, 82]])
_PIGMENT = np.array([0.52, 0.40, 0.33])


def _smooth(shape: tuple[int, int], rng: np.random.Generator, cells: int) -> np.ndarray:
    """A smooth random field of about unit spread on ``shape`` (rows, cols), float32."""
    coarse = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    zoom = (shape[0] / coarse.shape[0], shape[1] / coarse.shape[1])
    return ndimage.zoom(coarse, zoom, order=3, mode="nearest", grid_mode=True)


def _lesion_mask(rows: np.ndarray, cols: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Soft lesion membership (0..1, float32) on the grids ``rows``, ``cols`` (fractions)."""
    centre = 0.5 + rng.uniform(-0.12, 0.12, 2)
    radius = rng.uniform(0.12, 0.3)
    elongation = rng.uniform(0.75, 1.3)
    dr, dc = rows - centre[0], (cols - centre[1]) * elongation
    angle = np.arctan2(dr, dc)
    harmonics = np.arange(2, 9)
    amplitudes = rng.uniform(0.02, 0.12, harmonics.size) / np.sqrt(harmonics - 1)
    phases = rng.uniform(0, 2 * np.pi, harmonics.size)
    terms = zip(harmonics, amplitudes, phases, strict=True)
    wobble = sum(a * np.cos(k * angle + f) for k, a, f in terms)
    edge = radius * (1 + wobble) - np.hypot(dr, dc)
    softness = radius * rng.uniform(0.03, 0.12)
    return (1 / (1 + np.exp(-edge / softness))).astype(np.float32)


def _hairs(image: Image.Image, rng: np.random.Generator) -> None:
    """Draw 0-8 dark curved hairs onto ``image`` in place."""
    draw = ImageDraw.Draw(image)
    width, height = image.size
    for _ in range(rng.integers(0, 9)):
        points = rng.uniform(0, 1, (3, 2)) * (width, height)
        t = np.linspace(0, 1, 40)[:, None]
        curve = (1 - t) ** 2 * points[0] + 2 * (1 - t) * t * points[1] + t**2 * points[2]
        colour = tuple(int(c) for c in rng.uniform(20, 60, 3))
        thickness = max(1, round(min(width, height) * rng.uniform(0.002, 0.006)))
        draw.line([tuple(p) for p in curve], fill=colour, width=thickness)


def isic_phantom(
    shape: tuple[int, ...], rng: np.random.Generator
) -> tuple[Image.Image, Image.Image]:
    """A dermoscopy image (RGB) and its lesion mask (mode L, 0/255), ``shape`` = (width,
    height) in pixels."""
    width, height = shape
    rows, cols = np.meshgrid(
        np.linspace(0, 1, height, dtype=np.float32),
        np.linspace(0, width / height, width, dtype=np.float32) - (width / height - 1) / 2,
        indexing="ij",
    )
    skin = _SKIN[rng.integers(len(_SKIN))] * rng.uniform(0.92, 1.06, 3)
    tone = 1 + 0.05 * _smooth((height, width), rng, 4)[..., None]
    image = np.broadcast_to(skin, (height, width, 3)) * tone
    lesion = _lesion_mask(rows, cols, rng)
    pigment = (
        _PIGMENT
        * rng.uniform(0.75, 1.3)
        * (1 + 0.25 * _smooth((height, width), rng, 10))[..., None]
    )
    globules = _smooth((height, width), rng, 24) > 1.3
    pigment = np.where(globules[..., None], pigment * 0.6, pigment)
    if rng.uniform() < 0.3:
        veil = (_smooth((height, width), rng, 5) > 0.5)[..., None]
        pigment = np.where(veil, pigment * np.array([0.8, 0.95, 1.25]), pigment)
    image = image * (1 - lesion[..., None] * (1 - np.clip(pigment, 0.05, 1)))
    distance = np.hypot(rows - 0.5, cols - 0.5)
    lighting = 1 - 0.35 * distance**2
    if rng.uniform() < 0.4:
        lighting = lighting * (1 / (1 + np.exp((distance - rng.uniform(0.55, 0.7)) / 0.01)))
    image = image * lighting[..., None] + rng.normal(0, 3, image.shape)
    picture = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), "RGB")
    _hairs(picture, rng)
    mask = Image.fromarray(np.where(lesion > 0.5, 255, 0).astype(np.uint8), "L")
    return picture, mask
