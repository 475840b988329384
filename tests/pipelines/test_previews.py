"""Previews show anatomy the radiological way, whatever the stored orientation, and photos as
they are, in colour."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.pipelines.previews import draw_preview, grid_panels
from medseg.pipelines.structures import Structure

# Three markers in a RAS+ grid of 30 (x, left to right) x 40 (y, back to front) x 20 (z, up):
# one anterior, one on the patient's right, one superior; all off the other axes' centres.
SHAPE = (30, 40, 20)
MARKERS = {"anterior": (15, 36, 10), "right": (27, 20, 10), "superior": (15, 20, 18)}
RAS = np.diag([1.0, 1.0, 2.0, 1.0])


def _phantom(affine_kind: str) -> tuple[np.ndarray, np.ndarray]:
    """The phantom stored RAS, or LPS (the first two axes reversed, as DICOM stores them)
    with the affine that says so: the same body in the same place."""
    volume = np.zeros(SHAPE, dtype=np.float32)
    for value, (x, y, z) in enumerate(MARKERS.values(), start=1):
        volume[x - 1 : x + 2, y - 1 : y + 2, z - 1 : z + 2] = value
    if affine_kind == "RAS":
        return volume, RAS
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = [SHAPE[0] - 1, SHAPE[1] - 1]
    return np.ascontiguousarray(volume[::-1, ::-1, :]), RAS @ flip


def _where(panel: np.ndarray, value: int) -> tuple[float, float]:
    """Mean (row, column) of the panel pixels holding ``value``, as fractions of its size."""
    rows, columns = np.nonzero(panel == value)
    assert rows.size, f"marker {value} not in the panel"
    return rows.mean() / panel.shape[0], columns.mean() / panel.shape[1]


@pytest.mark.parametrize("affine_kind", ["RAS", "LPS"])
def test_markers_land_where_a_radiologist_expects_them(affine_kind):
    volume, affine = _phantom(affine_kind)
    anterior, right, superior = 1, 2, 3
    for marker, value in (("anterior", anterior), ("right", right), ("superior", superior)):
        stored = MARKERS[marker] if affine_kind == "RAS" else _lps(MARKERS[marker])
        axial, coronal, sagittal = (p.pixels for p in grid_panels(volume, SHAPE, affine, stored))
        if marker == "anterior":
            assert _where(axial, value)[0] < 0.5  # anterior up
            assert _where(sagittal, value)[1] < 0.5  # facing left
        if marker == "right":
            assert _where(axial, value)[1] < 0.5  # the patient's right on the left
            assert _where(coronal, value)[1] < 0.5
        if marker == "superior":
            assert _where(coronal, value)[0] < 0.5
            assert _where(sagittal, value)[0] < 0.5


def test_lps_and_ras_storage_give_identical_panels():
    centre = MARKERS["anterior"]
    volume, affine = _phantom("RAS")
    ras = grid_panels(volume, SHAPE, affine, centre)
    volume, affine = _phantom("LPS")
    lps = grid_panels(volume, SHAPE, affine, _lps(centre))
    for one, other in zip(ras, lps, strict=True):
        np.testing.assert_array_equal(one.pixels, other.pixels)
        assert one.aspect == other.aspect
    assert [p.aspect for p in ras] == [1.0, 2.0, 2.0]


def _lps(index: tuple[int, int, int]) -> tuple[int, int, int]:
    return (SHAPE[0] - 1 - index[0], SHAPE[1] - 1 - index[1], index[2])


def test_a_photo_is_drawn_upright_and_in_colour(tmp_path):
    from PIL import Image

    from medseg.datasets.image_io import read_volume

    picture = np.zeros((40, 60, 3), dtype=np.uint8)  # rows x columns, as PIL stores it
    picture[:20, :30] = (220, 20, 20)  # red top-left quarter
    picture[20:, 30:] = (20, 200, 20)
    Image.fromarray(picture).save(tmp_path / "photo.png")
    photo = read_volume(tmp_path / "photo.png").array  # (x, y, 3), as predict reads it
    (panel,) = grid_panels(photo, photo.shape[:2], np.eye(4), None)
    np.testing.assert_array_equal(panel.pixels, picture)

    labels = np.zeros(photo.shape[:2], dtype=np.uint8)
    labels[5:25, 5:15] = 255
    target = draw_preview(
        tmp_path / "preview.png",
        photo,
        np.eye(4),
        [("prediction", labels)],
        [Structure(255, "lesion", "#1f77b4")],
    )
    drawn = np.asarray(Image.open(target).convert("RGB")).astype(int)
    red = (drawn[..., 0] > 180) & (drawn[..., 1] < 60) & (drawn[..., 2] < 60)
    green = (drawn[..., 1] > 160) & (drawn[..., 0] < 60)
    assert red.sum() > 100 and green.sum() > 100
    rows, columns = np.nonzero(red)
    green_rows, green_columns = np.nonzero(green)
    assert rows.mean() < green_rows.mean() and columns.mean() < green_columns.mean()
