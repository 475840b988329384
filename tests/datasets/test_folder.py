"""Generic images/ + labels/ folders in any format, and the real files nibabel and pydicom ship."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from medseg.datasets import discover
from medseg.datasets.headers import UnusableImageError, inspect_image, is_image
from medseg.datasets.validation import validate
from medseg.errors import ConfigError
from medseg.transforms.readers import SimpleITKReader

NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"


def make_folder(root: Path) -> Path:
    """Three cases in three formats: NIfTI, MetaImage with a NRRD label, and 2D PNG."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    image = rng.normal(size=(12, 10, 8)).astype(np.float32)
    label = (image > 1).astype(np.uint8) * 3
    affine = np.diag([0.9, 0.9, 2.0, 1.0])
    nib.save(nib.Nifti1Image(image, affine), root / "images" / "case_a.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), root / "labels" / "case_a.nii.gz")
    sitk.WriteImage(sitk.GetImageFromArray(image.T.copy()), str(root / "images" / "case_b.mha"))
    sitk.WriteImage(sitk.GetImageFromArray(label.T.copy()), str(root / "labels" / "case_b.nrrd"))
    return root


def test_matches_names_across_formats_and_names_found_values(tmp_path):
    root = make_folder(tmp_path / "data")
    index = discover("folder", root, validate=True)
    assert [(c.id, c.image[0].name, c.label.name) for c in index.cases] == [
        ("case_a", "case_a.nii.gz", "case_a.nii.gz"),
        ("case_b", "case_b.mha", "case_b.nrrd"),
    ]
    assert index.labels.names == ("background", "label_3")
    assert (index.channels, index.modality, index.spatial_dims) == (("image",), "mri", 3)
    assert index.problems == []


def test_label_names_and_modality_come_from_the_config(tmp_path):
    root = make_folder(tmp_path / "data")
    index = discover("folder", root, labels={"lesion": 3}, modality="ct")
    assert index.labels.names == ("background", "lesion")
    assert index.labels.values == ((0,), (3,))
    assert index.modality == "ct"
    assert validate(discover("folder", root, labels={"lesion": 2})) != []
    with pytest.raises(ConfigError, match="distinct values"):
        discover("folder", root, labels={"a": 1, "b": 1})
    with pytest.raises(ConfigError, match="modality 'pet' unknown"):
        discover("folder", root, modality="pet")
    with pytest.raises(ConfigError, match="takes no option labels"):
        discover("lits", root, labels={"lesion": 3})


def test_colour_images_make_a_2d_rgb_dataset(tmp_path):
    for folder in ("images", "labels"):
        (tmp_path / folder).mkdir()
    Image.new("RGB", (20, 16), (200, 150, 120)).save(tmp_path / "images" / "photo.jpg")
    Image.new("L", (20, 16), 1).save(tmp_path / "labels" / "photo.png")
    index = discover("folder", tmp_path, validate=True)
    assert (index.channels, index.modality, index.spatial_dims) == (
        ("red", "green", "blue"),
        "rgb",
        2,
    )
    assert index.problems == []


def test_missing_partners_and_missing_folders(tmp_path):
    root = make_folder(tmp_path / "data")
    (root / "labels" / "case_b.nrrd").rename(root / "labels" / "case_c.nrrd")
    index = discover("folder", root)
    assert [c.id for c in index.cases] == ["case_a"]
    assert [(p.path.name, p.reason) for p in index.problems] == [
        ("case_b.mha", "label missing (expected labels/case_b.mha)"),
        ("case_c.nrrd", "label without an image"),
    ]
    shutil.rmtree(root / "labels")
    with pytest.raises(ConfigError, match="no labels/ folder"):
        discover("folder", root)
    with pytest.raises(ConfigError, match="label names unknown"):
        discover("folder", root, need_labels=False)
    assert len(discover("folder", root, need_labels=False, labels={"x": 1}).cases) == 2
    with pytest.raises(ConfigError, match="no images/ folder"):
        discover("folder", tmp_path)


@pytest.mark.parametrize("format_suffix", [".mha", ".nrrd"])
def test_truncated_itk_formats_are_found(tmp_path, format_suffix):
    root = make_folder(tmp_path / "data")
    image = root / "images" / f"case_b{format_suffix}"
    if format_suffix != ".mha":
        sitk.WriteImage(sitk.ReadImage(str(root / "images" / "case_b.mha")), str(image))
        (root / "images" / "case_b.mha").unlink()
    image.write_bytes(image.read_bytes()[:-100])
    problems = validate(discover("folder", root))
    assert [p.path for p in problems] == [image]
    assert "truncated" in problems[0].reason


NIBABEL_ERRORS = {
    "analyze.hdr": "data file missing (analyze.img)",
    "nifti1.hdr": "data file missing (nifti1.img)",
    "nifti2.hdr": "data file missing (nifti2.img)",
    "row_major.dconn.nii": "not a volume (Cifti2Image has no affine)",
}


@pytest.mark.parametrize(
    "path", sorted(p for p in NIBABEL_DATA.iterdir() if is_image(p)), ids=lambda p: p.name
)
def test_nibabel_test_files_are_read_or_refused_with_the_reason(path):
    if path.name in NIBABEL_ERRORS:
        with pytest.raises(UnusableImageError, match=re.escape(NIBABEL_ERRORS[path.name])):
            inspect_image(path)
        return
    header = inspect_image(path)
    if path.suffix == ".dcm":  # nibabel ships these DICOM files but does not load them
        data, meta = SimpleITKReader().get_data(SimpleITKReader().read(path))
        assert header.shape == data.shape
        np.testing.assert_allclose(header.affine, meta["affine"])
        return
    image = nib.load(path)
    assert header.shape == image.shape[:3]
    np.testing.assert_allclose(header.affine, image.affine)


def label_like(image: Path, target: Path) -> None:
    """An all-background NIfTI label on the grid ``SimpleITKReader`` gives ``image``."""
    data, meta = SimpleITKReader().get_data(SimpleITKReader().read(image))
    nib.save(nib.Nifti1Image(np.zeros(data.shape[:3], np.uint8), meta["affine"]), target)


def test_folder_of_real_nifti_and_dicom_files(tmp_path):
    pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    sources = {
        "anatomical.nii": NIBABEL_DATA / "anatomical.nii",
        "ct_small.dcm": Path(get_testdata_file("CT_small.dcm")),
        "mr_truncated.dcm": Path(get_testdata_file("MR_truncated.dcm")),
        "rtplan.dcm": Path(get_testdata_file("rtplan.dcm")),
    }
    for name, source in sources.items():
        shutil.copy(source, tmp_path / "images" / name)
        stem = name.split(".")[0]
        reference = source if name != "mr_truncated.dcm" else get_testdata_file("MR_small.dcm")
        if name != "rtplan.dcm":
            label_like(Path(reference), tmp_path / "labels" / f"{stem}.nii.gz")
        else:
            shutil.copy(
                tmp_path / "labels" / "ct_small.nii.gz", tmp_path / "labels" / "rtplan.nii.gz"
            )
    problems = validate(discover("folder", tmp_path, labels={"background": 0}))
    assert sorted((p.path.name, p.reason.split(" (")[0]) for p in problems) == [
        ("mr_truncated.dcm", "unreadable"),
        ("rtplan.dcm", "unreadable"),
    ]


def test_dicom_series_folder_is_one_case(tmp_path):
    (tmp_path / "images" / "patient_1").mkdir(parents=True)
    (tmp_path / "labels").mkdir()
    volume = sitk.GetImageFromArray(np.arange(4 * 6 * 5, dtype=np.int16).reshape(4, 6, 5))
    volume.SetSpacing((0.8, 0.8, 3.0))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(4):
        section = volume[:, :, z]
        section.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.9.1")
        section.SetMetaData("0020|0013", str(z + 1))
        section.SetMetaData(
            "0020|0032", "\\".join(map(str, volume.TransformIndexToPhysicalPoint((0, 0, z))))
        )
        writer.SetFileName(str(tmp_path / "images" / "patient_1" / f"{z}.dcm"))
        writer.Execute(section)
    label_like(tmp_path / "images" / "patient_1", tmp_path / "labels" / "patient_1.nii.gz")
    index = discover("folder", tmp_path, labels={"organ": 1}, validate=True)
    assert [c.id for c in index.cases] == ["patient_1"]
    assert index.problems == []
    assert inspect_image(tmp_path / "images" / "patient_1").shape == (5, 6, 4)


def test_config_label_order_is_the_channel_order(tmp_path):
    root = make_folder(tmp_path / "data")
    index = discover("folder", root, labels={"cell": 3, "membrane": 0})
    assert index.labels.names == ("cell", "membrane")
    assert index.labels.foreground == {"membrane": (0,)}
