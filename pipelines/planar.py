"""Measures of 2D label maps: areas in mm^2 where the pixels have a size, pixel counts alone
where they have none (photos: PNG, JPEG, BMP), instead of volumes in ml."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
VOLUME_FIELDS = ("volume_pred_ml", "volume_ref_ml", "volume_diff_ml")
AREA_FIELDS = ("area_pred_mm2", "area_ref_mm2", "area_diff_mm2")


def has_pixel_size(path: Path) -> bool:
    """Whether a 2D image file states a physical pixel size (every format but photos)."""
    return not Path(path).name.lower().endswith(PHOTO_SUFFIXES)


def planar_row(row: Mapping[str, Any], pixel_size: bool) -> dict[str, Any]:
    """A ``case_metrics`` row of a 2D case with its volumes (ml) turned into areas (mm^2)
    when ``pixel_size``, else left out: the pixel counts (``voxels_*``) stay either way."""
    planar = {key: value for key, value in row.items() if key not in VOLUME_FIELDS}
    if pixel_size:
        for volume, area in zip(VOLUME_FIELDS, AREA_FIELDS, strict=True):
            planar[area] = float(row[volume]) * 1000.0
    return planar


def planar_columns(columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """``columns`` (of the CSV, or the summary's metrics) as the ``rows`` hold them: volume
    columns become area columns for rows of 2D cases with a pixel size, and are dropped
    for photos."""
    if not rows or VOLUME_FIELDS[0] in rows[0]:
        return list(columns)
    swap = dict(zip(VOLUME_FIELDS, AREA_FIELDS, strict=True))
    kept = AREA_FIELDS[0] in rows[0]
    return [swap.get(c, c) for c in columns if kept or c not in VOLUME_FIELDS]


def distance_unit(rows: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """``{"distance_unit": ...}``: ``pixel`` when ``rows`` are of photos (their HD95 and
    ASSD count pixels), else ``mm``."""
    photo = bool(rows) and not {*VOLUME_FIELDS, *AREA_FIELDS} & set(rows[0])
    return {"distance_unit": "pixel" if photo else "mm"}
