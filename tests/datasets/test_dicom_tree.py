"""DICOM folder trees (patient/study/series): discovery, selection rules, safe case names."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytest.importorskip("pydicom")

from medseg.datasets.dicom_tree import (
    SeriesRules,
    case_name,
    discover_dicom_tree,
    series_rules,
)
from medseg.errors import ConfigError
from tests.pipelines.dicom_series import marked_volume, write_ct_series


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    """Two patients as an archive exports them, with a scout, an MR series, a text file,
    a named pipe and a link among the series; header strings that try to leave the tree."""
    root = tmp_path / "export"
    study = root / "P001" / "20240102_CT"
    write_ct_series(study / "3_abdomen", marked_volume(16, 16, 6), series_description="ABDOMEN")
    write_ct_series(study / "1_scout", marked_volume(16, 16, 6)[:2], series_number=1)
    write_ct_series(root / "P001" / "20240105_MR" / "2_t1", marked_volume(16, 16, 6), modality="MR")
    write_ct_series(
        root / "P002" / "study" / "series",
        marked_volume(16, 16, 6),
        patient_id="../../etc",
        series_description="/tmp/x\\..\\evil",
    )
    (study / "README.txt").write_text("exported by PACS\n", encoding="utf-8")
    os.mkfifo(study / "pipe")
    (study / "link.dcm").symlink_to(study / "3_abdomen" / "IM0000.dcm")
    return root


def test_each_series_passing_the_rules_is_a_case_and_the_rest_are_named(archive: Path) -> None:
    tree = discover_dicom_tree(archive, series_rules("ct"))
    assert [(s.folder.name, s.slices, s.modality) for s in tree.series] == [
        ("3_abdomen", 6, "CT"),
        ("series", 6, "CT"),
    ]
    reasons = {item.path.name: item.reason for item in tree.skipped}
    assert reasons["README.txt"].startswith("not DICOM")
    assert reasons["pipe"] == "not a regular file (a pipe, socket or device)"
    assert reasons["link.dcm"] == "link (not followed)"
    assert "2 images, fewer than the minimum of 5" in reasons["1_scout"]
    assert "modality MR (selected: CT)" in reasons["2_t1"]


def test_case_names_are_readable_safe_stable_and_unique(archive: Path) -> None:
    first = discover_dicom_tree(archive, SeriesRules(None, 1))
    again = discover_dicom_tree(archive, SeriesRules(None, 1))
    names = [series.case_id for series in first.series]
    assert names == [series.case_id for series in again.series]
    assert len(set(names)) == len(names) == 4
    assert any(name.startswith("P001_20240102_S3_ABDOMEN_") for name in names)
    for name in names:
        assert all(c.isalnum() or c in "_-" for c in name), name
    assert case_name(("", ".."), "1.2.3") == case_name((), "1.2.3")


def test_rules_from_options(archive: Path) -> None:
    assert len(discover_dicom_tree(archive, series_rules("ct", ["any"], 2)).series) == 4
    mr = discover_dicom_tree(archive, series_rules("ct", ["mr"]))
    assert [series.modality for series in mr.series] == ["MR"]
    with pytest.raises(ConfigError, match="no DICOM series selected"):
        discover_dicom_tree(archive, series_rules("ct", ["PT"]))


def test_predict_segments_a_nested_export_and_reports_what_it_skipped(
    archive: Path, ct_model_dir: Path, tmp_path: Path, medseg_cli
) -> None:
    output = tmp_path / "out"
    result = medseg_cli("predict", ct_model_dir, archive, "--output", output)
    assert result.code == 0, result.out + result.err
    report = json.loads((output / "predict_report.json").read_text(encoding="utf-8"))
    assert [case["status"] for case in report["cases"]] == ["done", "done"]
    for case in report["cases"]:
        assert Path(case["output"]).parent == output
        assert Path(case["dicom_seg"]).is_file()
    skipped = {Path(item["path"]).name for item in report["skipped_inputs"]}
    assert {"README.txt", "pipe", "link.dcm", "1_scout", "2_t1"} <= skipped
    assert "skipped" in result.out
