"""``evaluate`` end to end on tiny label files: pairing, problems, CSV, summary, plots, MLflow."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import nibabel
import numpy as np
import pytest
import SimpleITK

from medseg.datasets.base import LabelScheme
from medseg.datasets.image_io import read_volume
from medseg.errors import ConfigError
from medseg.pipelines.evaluation.evaluate import CSV_COLUMNS, evaluate, track_evaluation
from medseg.pipelines.evaluation.metrics import SUMMARY_METRICS, EmptyRule

SCHEME = LabelScheme.classes({"background": 0, "liver": 1, "tumour": 2})
SPACING = (0.8, 0.9, 2.0)
AFFINE = np.diag([*SPACING, 1.0])
SHAPE = (16, 14, 8)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def labels(shift: int = 0, tumour: bool = True) -> np.ndarray:
    volume = np.zeros(SHAPE, dtype=np.uint8)
    volume[3 + shift : 12 + shift, 2:11, 1:7] = 1
    if tumour:
        volume[5:8, 4 + shift : 7 + shift, 2:5] = 2
    return volume


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    nibabel.Nifti1Image(array, affine).to_filename(path)
    return path


def write_mha(path: Path, array: np.ndarray) -> Path:
    # The same grid as AFFINE: NIfTI's RAS axes are ITK's LPS axes with x and y flipped.
    image = SimpleITK.GetImageFromArray(array.transpose(2, 1, 0))
    image.SetSpacing(SPACING)
    image.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    SimpleITK.WriteImage(image, str(path))
    return path


@pytest.fixture
def dataset(tmp_path: Path) -> dict:
    """References for cases a..f and predictions: a, b good (NIfTI), c good (.mha), d of
    another shape, e with another affine, f missing, g without a reference."""
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir()
    pred_dir.mkdir()
    references = {c: write_nifti(ref_dir / f"{c}.nii.gz", labels()) for c in "abcdef"}
    write_nifti(pred_dir / "a.nii.gz", labels())
    write_nifti(pred_dir / "b.nii.gz", labels(shift=1))
    write_mha(pred_dir / "c.mha", labels(shift=2, tumour=False))
    write_nifti(pred_dir / "d.nii.gz", np.zeros((16, 14, 9), np.uint8))
    write_nifti(pred_dir / "e.nii", labels(), np.diag([*SPACING[:2], 2.5, 1.0]))
    write_nifti(pred_dir / "g.nii.gz", labels())
    image = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    images = {"c": write_nifti(tmp_path / "c_image.nii.gz", image)}
    return {"pred": pred_dir, "references": references, "images": images, "out": tmp_path / "o"}


def test_evaluate_writes_rows_summary_and_plots_and_reports_problems(dataset):
    result = evaluate(
        dataset["pred"],
        dataset["references"],
        SCHEME,
        dataset["out"],
        images=dataset["images"],
        workers=2,
        worst_cases=2,
    )
    assert [(row["case"], row["label"]) for row in result.rows] == [
        (case_id, label) for case_id in "abc" for label in ("liver", "tumour")
    ]
    by_case = {(row["case"], row["label"]): row for row in result.rows}
    assert by_case["a", "liver"]["dice"] == 1.0 and by_case["a", "tumour"]["hd95"] == 0.0
    assert 0 < by_case["b", "tumour"]["dice"] < 1
    # c was read with SimpleITK: it lines up with the NIfTI reference and scores like one.
    assert by_case["c", "tumour"]["empty"] == "pred"
    assert by_case["c", "tumour"]["hd95"] == pytest.approx(
        math.dist((0, 0, 0), np.multiply(SHAPE, SPACING))
    )
    voxel_ml = 0.8 * 0.9 * 2.0 / 1000
    assert by_case["c", "liver"]["volume_ref_ml"] == pytest.approx((9 * 9 * 6 - 27) * voxel_ml)

    reasons = {p.case_id: p.reason for p in result.problems}
    assert set(reasons) == {"d", "e", "f", "g"}
    assert "shape (16, 14, 9)" in reasons["d"]
    assert "affine" in reasons["e"] and "resample" in reasons["e"]
    assert reasons["f"] == "missing prediction"
    assert "extra prediction" in reasons["g"]

    with result.paths["metrics_csv"].open(newline="") as handle:
        table = list(csv.DictReader(handle))
    assert tuple(table[0]) == CSV_COLUMNS
    assert CSV_COLUMNS[:9] == (
        "case", "label", "dice", "iou", "hd95", "assd", "nsd", "volume_pred_ml", "volume_ref_ml"
    )  # fmt: skip
    assert len(table) == 6 and float(table[2]["dice"]) == by_case["b", "liver"]["dice"]

    summary = json.loads(result.paths["summary_json"].read_text(), parse_constant=pytest.fail)
    assert summary == result.summary
    assert summary["cases"] == {"references": 6, "predictions": 5, "evaluated": 3}
    assert summary["rules"]["one_empty_distance"] == "diagonal"
    assert summary["rules"]["tolerance_mm"] == 1.0
    assert {p["case"] for p in summary["problems"]} == {"d", "e", "f", "g"}
    for label in ("liver", "tumour"):
        entry = summary["labels"][label]
        assert set(entry) == {*SUMMARY_METRICS, "global_dice", "empty"}
        assert set(entry["dice"]) == {"mean", "std", "median", "count", "nan_count", "nan_cases"}
        assert entry["dice"]["count"] == 3
    assert summary["labels"]["tumour"]["empty"]["pred"] == ["c"]
    assert [case["case"] for case in summary["worst_cases"]] == ["c", "b"]

    pngs = [f"boxplot_{metric}" for metric in SUMMARY_METRICS] + ["overlay_c", "overlay_b"]
    assert set(result.paths) == {"metrics_csv", "summary_json", "lesionwise_csv", *pngs}
    for name in pngs:
        assert result.paths[name].read_bytes()[:8] == PNG_MAGIC
    assert not [p for p in dataset["out"].iterdir() if p.name.startswith(".")]


def test_nan_rule_rows_are_flagged_and_left_out_of_the_means(dataset, tmp_path):
    result = evaluate(
        dataset["pred"],
        {c: dataset["references"][c] for c in "abc"},
        SCHEME,
        tmp_path / "nan",
        rule=EmptyRule(one_empty_distance="nan"),
        workers=1,
        worst_cases=0,
    )
    hd95 = result.summary["labels"]["tumour"]["hd95"]
    assert (hd95["count"], hd95["nan_count"], hd95["nan_cases"]) == (2, 1, ["c"])
    rows = {row["case"]: row for row in result.rows if row["label"] == "tumour"}
    assert hd95["mean"] == pytest.approx((rows["a"]["hd95"] + rows["b"]["hd95"]) / 2)
    assert "nan" in result.paths["metrics_csv"].read_text()
    assert "g" in {p.case_id for p in result.problems}
    assert not [name for name in result.paths if name.startswith("overlay")]


def test_fractional_and_unreadable_label_files_are_problems(tmp_path):
    (tmp_path / "pred").mkdir()
    reference = write_nifti(tmp_path / "ref.nii.gz", labels())
    write_nifti(tmp_path / "pred" / "x.nii.gz", labels().astype(np.float32) * 0.5)
    (tmp_path / "pred" / "y.nii.gz").write_bytes(b"not a nifti file")
    result = evaluate(
        tmp_path / "pred", {"x": reference, "y": reference}, SCHEME, tmp_path / "out", workers=1
    )
    reasons = {p.case_id: p.reason for p in result.problems}
    assert "not whole numbers" in reasons["x"]
    assert reasons["y"].startswith("unreadable")
    assert result.rows == [] and result.summary["labels"]["liver"]["dice"]["mean"] is None


def test_unusable_arguments_raise_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        evaluate(tmp_path / "absent", {}, SCHEME, tmp_path / "out")
    with pytest.raises(ConfigError, match="workers"):
        evaluate(tmp_path, {}, SCHEME, tmp_path / "out", workers=0)


def test_itk_and_nifti_files_of_one_grid_read_alike(tmp_path):
    nifti = read_volume(write_nifti(tmp_path / "x.nii.gz", labels()))
    itk = read_volume(write_mha(tmp_path / "x.mha", labels()))
    np.testing.assert_array_equal(nifti.array, itk.array)
    np.testing.assert_allclose(nifti.affine, itk.affine, atol=1e-6)
    assert nifti.spacing == pytest.approx(SPACING) and itk.spacing == pytest.approx(SPACING)


def test_track_evaluation_logs_metrics_and_files(dataset, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    result = evaluate(
        dataset["pred"],
        {c: dataset["references"][c] for c in "ab"},
        SCHEME,
        tmp_path / "tracked",
        images={"b": tmp_path / "absent.nii.gz"},
        workers=1,
        worst_cases=1,
    )
    assert result.paths["overlay_b"].is_file()  # drawn without the image it could not read
    run_id = track_evaluation(result, run_name="eval")
    run = mlflow.MlflowClient().get_run(run_id)
    liver = result.summary["labels"]["liver"]
    assert run.data.metrics["eval/dice/liver"] == pytest.approx(liver["dice"]["mean"])
    assert run.data.metrics["eval/global_dice/tumour"] == pytest.approx(
        result.summary["labels"]["tumour"]["global_dice"]
    )
    assert "eval/dice_mean" in run.data.metrics
    lesionwise = result.summary["lesionwise"]["labels"]["tumour"]["dice"]
    assert run.data.metrics["eval/lesionwise_dice/tumour"] == pytest.approx(lesionwise)
    assert run.data.params["eval.one_empty_distance"] == "diagonal"
    logged = {Path(f.path).name for f in mlflow.MlflowClient().list_artifacts(run_id, "evaluation")}
    assert logged == {path.name for path in result.paths.values()}


@pytest.mark.parametrize(("layout", "shape"), [("em", (32, 32, 8)), ("isic", (48, 40))])
def test_predictions_of_tiff_and_png_datasets_are_scored_against_them(
    tmp_path, layout, shape, medseg_cli, untrained_model
):
    from medseg.datasets import discover
    from medseg.datasets.synthetic import synthesize

    data = tmp_path / "data"
    synthesize(layout, data, cases=2, shape=shape, seed=0)
    index = discover(layout, data)
    model = untrained_model(
        tmp_path / "model",
        layout=layout,
        modality=index.modality,
        channels=list(index.channels),
        labels=index.labels,
        patch_size=[16, 16],
        features=[4, 8],
        spatial_dims=index.spatial_dims,
    )
    assert medseg_cli("predict", model, data, "--output", tmp_path / "pred").code == 0
    result = medseg_cli("evaluate", tmp_path / "pred", data, "--output", tmp_path / "report")
    # The EM layout's unlabelled test stack is segmented too, and has nothing to score against.
    problems = [line for line in result.err.splitlines() if line.startswith("problem")]
    assert [line for line in problems if not line.endswith("(case test)")] == [], result.err
    with (tmp_path / "report" / "metrics.csv").open() as table:
        assert {row["case"] for row in csv.DictReader(table)} == {c.id for c in index.cases}
