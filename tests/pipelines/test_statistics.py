"""statistics.csv's numbers on label maps whose answers are counted by hand."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from medseg.datasets.base import LabelScheme
from medseg.pipelines.statistics import (
    COLUMNS,
    label_statistics,
    largest_structure_centre,
    statistics_csv,
)
from medseg.pipelines.structures import Structure, dataset_structures

LIVER, TUMOUR = Structure(1, "liver", "#1f77b4"), Structure(2, "tumour", "#ff7f0e")


def test_volumes_components_intensities_and_boxes():
    labels = np.zeros((20, 16, 10), dtype=np.uint8)
    labels[2:12, 3:9, 1:6] = 1  # 300 voxels
    labels[15:17, 10:12, 7:9] = 1  # 8 voxels, a second component
    image = np.zeros(labels.shape, dtype=np.int16)
    image[2:12, 3:9, 1:6] = 100
    image[15:17, 10:12, 7:9] = 10
    liver, tumour = label_statistics(labels, [LIVER, TUMOUR], (0.5, 1.0, 2.0), image)
    assert liver["voxels"] == 308
    assert liver["volume_ml"] == pytest.approx(308 * 1.0 / 1000)
    assert (liver["components"], liver["largest_component_voxels"]) == (2, 300)
    assert liver["largest_component_ml"] == pytest.approx(0.3)
    values = np.r_[np.full(300, 100.0), np.full(8, 10.0)]
    assert liver["intensity_mean"] == pytest.approx(values.mean())
    assert liver["intensity_std"] == pytest.approx(values.std())
    box = [liver[f"bbox_{end}_{axis}"] for axis in "xyz" for end in ("min", "max")]
    assert box == [2, 16, 3, 11, 1, 8]
    assert liver["largest_component_centre"] == [6.5, 5.5, 3.0]
    assert largest_structure_centre([liver, tumour]) == (6, 6, 3)
    assert tumour["voxels"] == 0 and tumour["components"] == 0
    assert tumour["intensity_mean"] is None and tumour["bbox_min_x"] is None


def test_photos_count_pixels_and_nan_voxels_are_left_out():
    labels = np.zeros((8, 6), dtype=np.uint8)
    labels[1:3, 1:4] = 255
    image = np.full(labels.shape, 50.0)
    image[1, 1] = np.nan
    (lesion,) = label_statistics(labels, [Structure(255, "lesion", "#000000")], None, image)
    assert lesion["voxels"] == 6
    assert lesion["volume_ml"] is None and lesion["area_mm2"] is None
    assert lesion["intensity_mean"] == 50.0
    assert lesion["bbox_min_z"] is None
    (sized,) = label_statistics(labels, [Structure(255, "lesion", "#000000")], (0.1, 0.1))
    assert sized["area_mm2"] == pytest.approx(0.06)


def test_csv_has_one_row_per_case_and_label_with_empty_cells_for_none():
    labels = np.zeros((4, 4, 4), dtype=np.uint8)
    labels[0, 0, 0] = 2
    rows = [
        {"case": "a", **row}
        for row in label_statistics(labels, [LIVER, TUMOUR], (1.0, 1.0, 1.0), None)
    ]
    read = list(csv.DictReader(io.StringIO(statistics_csv(rows))))
    assert tuple(read[0]) == COLUMNS
    assert [(row["case"], row["label"], row["voxels"]) for row in read] == [
        ("a", "liver", "0"),
        ("a", "tumour", "1"),
    ]
    assert read[1]["intensity_mean"] == ""


def test_brats_regions_are_reported_per_written_value():
    scheme = LabelScheme(
        mode="regions",
        names=("TC", "WT", "ET"),
        values=((1, 4), (1, 2, 4), (4,)),
        paint=(1, 2, 4),
        paint_order=(1, 0, 2),
    )
    assert [(s.value, s.name) for s in dataset_structures(scheme, "brats")] == [
        (1, "Necrotic tumour core"),
        (2, "Peritumoural oedema"),
        (4, "Enhancing tumour"),
    ]
