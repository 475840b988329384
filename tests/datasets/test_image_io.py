"""Image I/O: fitted CT statistics are the same whatever format the training images are in
(NIfTI, MetaImage, NRRD written by SimpleITK, a DICOM series written by pydicom)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medseg.datasets import discover
from medseg.datasets.fingerprint import fingerprint_dataset
from medseg.datasets.image_io import declared_shape, read_volume, suffix_of
from medseg.pipelines.training.plan import ct_statistics

SHAPE = (16, 12, 5)
SPACING = (0.8, 0.9, 2.5)
ORIGIN = (-40.0, 20.0, 7.5)  # RAS mm of voxel (0, 0, 0)


def ct_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer Hounsfield units, a labelled 'liver' block and their RAS affine."""
    rng = np.random.default_rng(3)
    hu = rng.integers(-1000, 400, SHAPE).astype(np.int16)
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[3:12, 2:9, 1:4] = 1
    hu[label == 1] = rng.integers(20, 180, int(label.sum()))
    affine = np.diag([*SPACING, 1.0])
    affine[:3, 3] = ORIGIN
    return hu, label, affine


def write_itk(path: Path, hu: np.ndarray) -> None:
    image = sitk.GetImageFromArray(np.ascontiguousarray(hu.transpose(2, 1, 0)))
    image.SetSpacing(SPACING)
    image.SetDirection((-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))  # RAS axes in ITK's LPS
    image.SetOrigin((-ORIGIN[0], -ORIGIN[1], ORIGIN[2]))
    sitk.WriteImage(image, str(path))


def write_dicom_series(folder: Path, hu: np.ndarray) -> None:
    """One CT slice per file, stored as unsigned values with a rescale intercept of -1024."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    series, study = generate_uid(), generate_uid()
    for z in range(hu.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientID = "CT", "phantom"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.InstanceNumber = z + 1
        # LPS: the RAS x and y axes run the other way.
        ds.ImagePositionPatient = [-ORIGIN[0], -ORIGIN[1], ORIGIN[2] + z * SPACING[2]]
        ds.ImageOrientationPatient = [-1, 0, 0, 0, -1, 0]
        ds.PixelSpacing = [SPACING[1], SPACING[0]]  # row spacing (y), column spacing (x)
        ds.SliceThickness = SPACING[2]
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        stored = (hu[:, :, z].astype(np.int32) + 1024).astype(np.uint16)
        ds.PixelData = np.ascontiguousarray(stored.T).tobytes()  # rows are y
        ds.save_as(folder / f"slice_{z:03d}.dcm", enforce_file_format=True)


@pytest.fixture(scope="module")
def ct_folders(tmp_path_factory) -> dict[str, Path]:
    """Format -> a ``folder``-layout CT dataset of two cases whose images are in it."""
    roots = {}
    for kind in ("nifti", ".mha", ".nrrd", "dicom"):
        root = tmp_path_factory.mktemp(kind.strip("."))
        (root / "images").mkdir()
        (root / "labels").mkdir()
        for case in range(2):
            hu, label, affine = ct_case()
            hu = hu + case * 10  # two cases, two intensity ranges
            name = f"case_{case}"
            nib.save(nib.Nifti1Image(label, affine), root / "labels" / f"{name}.nii.gz")
            if kind == "nifti":
                nib.save(nib.Nifti1Image(hu, affine), root / "images" / f"{name}.nii.gz")
            elif kind == "dicom":
                write_dicom_series(root / "images" / name, hu)
            else:
                write_itk(root / "images" / f"{name}{kind}", hu)
        roots[kind] = root
    return roots


@pytest.mark.parametrize("kind", [".mha", ".nrrd", "dicom"])
def test_fitted_ct_statistics_do_not_depend_on_the_training_images_format(ct_folders, kind):
    def fitted(root: Path) -> dict[str, float]:
        index = discover("folder", root, labels={"liver": 1}, modality="ct", validate=True)
        assert index.problems == [], index.problems
        assert [case.id for case in index.cases] == ["case_0", "case_1"]
        samples = fingerprint_dataset(index).samples[index.channels[0]]["foreground"]
        return ct_statistics(samples)

    expected = fitted(ct_folders["nifti"])
    assert 20 <= expected["mean"] <= 190  # the liver's HU, not the air around it
    assert fitted(ct_folders[kind]) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("kind", ["nifti", ".mha", ".nrrd"])
def test_read_volume_gives_hounsfield_units_and_geometry_in_ras(ct_folders, kind):
    hu, _, affine = ct_case()
    path = sorted((ct_folders[kind] / "images").iterdir())[0]  # case_0
    volume = read_volume(path)
    np.testing.assert_array_equal(volume.array, hu)
    np.testing.assert_allclose(volume.affine, affine, atol=1e-5)
    assert volume.spacing == pytest.approx(SPACING)
    assert declared_shape(path) == (SHAPE if suffix_of(path) == ".nii.gz" else None)
