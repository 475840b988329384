"""What ``medseg predict`` writes for readers (statistics.csv, previews) and 2D PNG masks,
from a real prediction run, and ``medseg evaluate`` on those masks."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medseg.pipelines.prediction.predict import predict


@pytest.fixture(scope="module")
def lits_cases(tmp_path_factory: pytest.TempPathFactory):
    from medseg.datasets.synthetic import synthesize

    root = tmp_path_factory.mktemp("lits")
    synthesize("lits", root, cases=2, shape=(32, 28, 12), seed=3)
    return root


def test_statistics_and_previews_describe_every_predicted_case(tmp_path, ct_model_dir, lits_cases):
    output = tmp_path / "out"
    report = predict(ct_model_dir, [str(lits_cases)], output, show_progress=False, preview=True)
    assert report.failed == 0
    with (output / "statistics.csv").open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    cases = [entry.case for entry in report.cases]
    assert [(row["case"], row["label"]) for row in rows] == [
        (case, label) for case in cases for label in ("Liver", "Liver tumour")
    ]
    saved = json.loads((output / "predict_report.json").read_text())
    for entry, case in zip(saved["cases"], cases, strict=True):
        written = nib.load(entry["output"])
        labels = np.asarray(written.dataobj)
        voxel_ml = float(np.prod(written.header.get_zooms()[:3])) / 1000
        for stats in entry["statistics"]:
            assert stats["voxels"] == int(np.count_nonzero(labels == stats["value"]))
            assert stats["volume_ml"] == pytest.approx(stats["voxels"] * voxel_ml)
        csv_voxels = [int(row["voxels"]) for row in rows if row["case"] == case]
        assert csv_voxels == [stats["voxels"] for stats in entry["statistics"]]
        preview = Image.open(output / "previews" / f"{case}.png")
        assert preview.format == "PNG" and preview.size[0] > 300

    # A rerun skips the finished cases and keeps their rows; a case redone gets new ones.
    (output / f"{cases[0]}.nii.gz").unlink()
    predict(ct_model_dir, [str(lits_cases)], output, show_progress=False)
    with (output / "statistics.csv").open(newline="") as stream:
        again = list(csv.DictReader(stream))
    assert sorted((row["case"], row["label"]) for row in again) == sorted(
        (row["case"], row["label"]) for row in rows
    )

    # Outputs of an earlier run (or an older medseg) without statistics or preview get them.
    (output / "statistics.csv").unlink()
    (output / "previews" / f"{cases[1]}.png").unlink()
    report = predict(ct_model_dir, [str(lits_cases)], output, show_progress=False, preview=True)
    assert [entry.status for entry in report.cases] == ["skipped", "skipped"]
    with (output / "statistics.csv").open(newline="") as stream:
        assert [row["voxels"] for row in csv.DictReader(stream)] == [row["voxels"] for row in again]
    assert (output / "previews" / f"{cases[1]}.png").is_file()


def test_photos_give_png_masks_in_the_dataset_values_and_pixel_metrics(tmp_path, untrained_model):
    from medseg.datasets.isic import LABELS
    from medseg.datasets.synthetic import synthesize
    from medseg.pipelines.evaluation.evaluate import evaluate
    from medseg.pipelines.evaluation.references import find_references

    root = tmp_path / "isic"
    images = synthesize("isic", root, cases=2, shape=(48, 40), seed=1)
    model = untrained_model(
        tmp_path / "model",
        layout="isic",
        modality="rgb",
        channels=["red", "green", "blue"],
        labels=LABELS,
        patch_size=[32, 32],
        features=[4, 8, 16],
    )
    output = tmp_path / "out"
    report = predict(model, [str(root)], output, show_progress=False, preview=True)
    assert report.failed == 0
    for image in images:
        mask = Image.open(output / f"{image.stem}.png")
        assert mask.format == "PNG" and mask.mode == "L"
        assert mask.size == Image.open(image).size
        assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 255}
    # The mask lies on the picture's grid: read back as predict reads the picture, it is
    # the label map that was written.
    from medseg.datasets.image_io import read_volume, write_label_like

    labels = np.zeros(read_volume(images[0]).array.shape[:2], dtype=np.uint8)
    labels[3:9, 20:38] = 255
    written = write_label_like(images[0], labels, tmp_path / "mask.png")
    np.testing.assert_array_equal(read_volume(written).array, labels)
    stats = json.loads((output / "predict_report.json").read_text())["cases"][0]["statistics"]
    assert stats[0]["volume_ml"] is None and stats[0]["area_mm2"] is None

    references = find_references(root, layout="isic", labels=None)
    result = evaluate(
        output, references.labels, references.scheme, tmp_path / "evaluation", workers=1
    )
    assert not result.problems
    assert result.summary["rules"]["distance_unit"] == "pixel"
    assert "volume_pred_ml" not in result.rows[0] and "voxels_pred" in result.rows[0]
    assert "volume_diff_ml" not in result.summary["labels"]["lesion"]
    header = (tmp_path / "evaluation" / "metrics.csv").read_text().splitlines()[0]
    assert "voxels_pred" in header and "ml" not in header
    assert (tmp_path / "evaluation" / "lesionwise.csv").is_file()


def test_a_png_mask_scored_against_a_tiff_with_a_pixel_size_reports_areas(tmp_path):
    import tifffile

    from medseg.datasets.base import LabelScheme
    from medseg.pipelines.evaluation.evaluate import evaluate

    reference = np.zeros((30, 40), dtype=np.uint8)  # rows x columns, as stored
    reference[5:15, 10:30] = 1
    (tmp_path / "ref").mkdir()
    # 100 pixels per cm: 0.1 mm pixels.
    tifffile.imwrite(
        tmp_path / "ref" / "a.tif", reference, resolution=(100, 100), resolutionunit="CENTIMETER"
    )
    (tmp_path / "pred").mkdir()
    prediction = reference.copy()
    prediction[5:15, 10:20] = 0  # half of it
    Image.fromarray(prediction).save(tmp_path / "pred" / "a.png")
    scheme = LabelScheme.classes({"background": 0, "cell": 1})
    result = evaluate(
        tmp_path / "pred",
        {"a": tmp_path / "ref" / "a.tif"},
        scheme,
        tmp_path / "evaluation",
        workers=1,
        worst_cases=0,
    )
    assert not result.problems
    (row,) = result.rows
    assert row["dice"] == pytest.approx(2 * 100 / 300)
    assert (row["voxels_pred"], row["voxels_ref"]) == (100, 200)
    assert row["area_ref_mm2"] == pytest.approx(200 * 0.01)
    assert result.summary["rules"]["distance_unit"] == "mm"
    assert result.summary["labels"]["cell"]["area_diff_mm2"]["mean"] == pytest.approx(-1.0)
