"""DICOM SEG output, read back with highdicom: segments, names, codes, identity, geometry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

highdicom = pytest.importorskip("highdicom")
pydicom = pytest.importorskip("pydicom")

from medseg.datasets.lits import LABELS  # noqa: E402
from medseg.pipelines.label_table import build_label_table  # noqa: E402
from medseg.pipelines.prediction.dicom_seg import GeometryError, write_dicom_seg  # noqa: E402
from medseg.transforms.readers import SimpleITKReader  # noqa: E402
from tests.pipelines.dicom_series import AXIAL, OBLIQUE, marked_volume, write_ct_series  # noqa: E402

TABLE = build_label_table(LABELS, "lits")
SERIES = {
    "ascending": {"orientation": AXIAL},
    "descending": {"orientation": AXIAL, "descending": True},
    "oblique": {"orientation": OBLIQUE},
}


def _labels_as_medseg_reads(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The series as medseg's reader gives it (x, y, z = column, row, slice) labelled
    liver (1) where it is bright, tumour (2) where it is bright from column 12 on."""
    reader = SimpleITKReader()
    image, meta = reader.get_data(reader.read(str(folder)))
    labels = (image > 100).astype(np.uint8)
    labels[12:][labels[12:] > 0] = 2
    return labels, meta["affine"]


@pytest.mark.parametrize("kind", SERIES)
def test_seg_segments_lie_on_the_source_pixels_they_came_from(kind: str, tmp_path: Path) -> None:
    files = write_ct_series(tmp_path / "series", marked_volume(16, 16, 8), **SERIES[kind])
    labels, affine = _labels_as_medseg_reads(tmp_path / "series")
    target = write_dicom_seg(tmp_path / "series", labels, affine, TABLE, tmp_path / "ct.seg.dcm")

    seg = highdicom.seg.segread(target)
    source = pydicom.dcmread(files[0])
    assert (seg.PatientID, seg.StudyInstanceUID, seg.FrameOfReferenceUID) == (
        source.PatientID,
        source.StudyInstanceUID,
        source.FrameOfReferenceUID,
    )
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    described = [seg.get_segment_description(n) for n in seg.get_segment_numbers()]
    assert [d.segment_label for d in described] == ["Liver", "Liver tumour"]
    assert [d.segmented_property_type.value for d in described] == ["10200004", "108369006"]
    assert [d.segmented_property_category.value for d in described] == ["91723000", "49755003"]
    lab = described[0].RecommendedDisplayCIELabValue
    rgb = highdicom.color.CIELabColor.from_dicom_value(lab).to_rgb()
    assert np.allclose(rgb, (221, 130, 101), atol=2)

    # The SEG's masks, frame by frame against each source image's own pixels (pydicom):
    # bright pixels are liver left of column 12 and tumour from it on, in every slice.
    tumour_columns = np.arange(16) >= 12
    for path in files:
        image = pydicom.dcmread(path)
        masks = seg.get_pixels_by_source_instance(
            [image.SOPInstanceUID], segment_numbers=[1, 2], assert_missing_frames_are_empty=True
        )[0]
        bright = image.pixel_array > 100
        assert np.array_equal(masks[..., 0], bright & ~tumour_columns), path.name
        assert np.array_equal(masks[..., 1], bright & tumour_columns), path.name
    assert (labels == 2).any()


def test_a_label_map_that_does_not_fit_the_series_geometry_is_not_written(tmp_path: Path) -> None:
    write_ct_series(tmp_path / "series", marked_volume(16, 16, 8))
    labels, affine = _labels_as_medseg_reads(tmp_path / "series")
    mirrored = affine.copy()
    mirrored[:3, 1] *= -1  # a negated column direction: front and back swapped
    with pytest.raises(GeometryError, match=r"segment 'Liver' lies .* voxels"):
        write_dicom_seg(tmp_path / "series", labels, mirrored, TABLE, tmp_path / "ct.seg.dcm")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["series"]


def test_predict_writes_seg_and_nifti_for_dicom_and_refuses_seg_for_nifti(
    ct_model_dir: Path, tmp_path: Path, medseg_cli
) -> None:
    import nibabel as nib

    write_ct_series(tmp_path / "series", marked_volume(16, 16, 8))
    output = tmp_path / "out"
    assert medseg_cli("predict", ct_model_dir, tmp_path / "series", "--output", output).code == 0
    report = json.loads((output / "predict_report.json").read_text(encoding="utf-8"))
    (case,) = report["cases"]
    assert Path(case["output"]).name == "series.nii.gz"
    assert Path(case["dicom_seg"]).name == "series.seg.dcm"
    seg = highdicom.seg.segread(case["dicom_seg"])
    assert [d.segment_label for d in seg.SegmentSequence] == ["Liver", "Liver tumour"]

    only_seg = ("--output", tmp_path / "seg", "--output-format", "dicom-seg")
    assert medseg_cli("predict", ct_model_dir, tmp_path / "series", *only_seg).code == 0
    assert not list((tmp_path / "seg").glob("*.nii.gz"))
    rerun = medseg_cli("predict", ct_model_dir, tmp_path / "series", *only_seg)
    assert "0 segmented, 1 already done" in rerun.out

    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), tmp_path / "v.nii.gz")
    result = medseg_cli(
        "predict",
        ct_model_dir,
        tmp_path / "v.nii.gz",
        "--output",
        tmp_path / "out2",
        "--output-format",
        "dicom-seg",
    )
    assert result.code == 1
    assert "needs a DICOM series" in result.out
