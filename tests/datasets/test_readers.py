"""Readers: every format gives nibabel's array order and RAS affine for the same data."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
from monai.data import NibabelReader
from monai.transforms import LoadImaged
from PIL import Image
from scipy.spatial.transform import Rotation

from medseg.transforms.readers import SimpleITKReader, TiffReader, image_readers

LPS = np.diag([-1.0, -1.0, 1.0])


def read(reader, path):
    return reader.get_data(reader.read(str(path)))


def oblique_affine(spacing=(0.8, 1.3, 2.7)) -> np.ndarray:
    """An oblique, anisotropic affine whose voxel axes run left, posterior, superior."""
    rotation = Rotation.from_euler("xyz", [20, -15, 30], degrees=True).as_matrix()
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([-spacing[0], -spacing[1], spacing[2]])
    affine[:3, 3] = [45.25, -12.5, 30.75]
    return affine


def sitk_image(array: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """The (x, y, z) ``array`` as a SimpleITK image with the geometry of RAS ``affine``."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((LPS @ affine[:3, :3] / spacing).ravel().tolist())
    image.SetOrigin((LPS @ affine[:3, 3]).tolist())
    return image


@pytest.fixture(scope="module")
def oblique(tmp_path_factory):
    folder = tmp_path_factory.mktemp("oblique")
    array = np.random.default_rng(0).integers(-1000, 2000, (7, 9, 5)).astype(np.int16)
    affine = oblique_affine()
    nib.save(nib.Nifti1Image(array, affine), folder / "image.nii.gz")
    for suffix in (".mha", ".nrrd"):
        sitk.WriteImage(sitk_image(array, affine), str(folder / f"image{suffix}"))
    return folder, array, affine


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
def test_itk_formats_read_like_nibabel_reads_the_nifti(oblique, suffix):
    folder, array, affine = oblique
    expected, expected_meta = read(NibabelReader(), folder / "image.nii.gz")
    data, meta = read(SimpleITKReader(), folder / f"image{suffix}")
    np.testing.assert_array_equal(data, expected)
    np.testing.assert_array_equal(data, array)
    np.testing.assert_allclose(meta["affine"], expected_meta["affine"], atol=1e-5)
    np.testing.assert_allclose(meta["affine"], affine, atol=1e-5)
    assert nib.aff2axcodes(meta["affine"]) == nib.aff2axcodes(affine)
    assert list(meta["spatial_shape"]) == [7, 9, 5]
    assert np.isnan(meta["original_channel_dim"])


def test_simpleitk_reads_nifti_like_nibabel(oblique):
    folder = oblique[0]
    expected, expected_meta = read(NibabelReader(), folder / "image.nii.gz")
    data, meta = read(SimpleITKReader(), folder / "image.nii.gz")
    np.testing.assert_array_equal(data, expected)
    np.testing.assert_allclose(meta["affine"], expected_meta["affine"], atol=1e-4)


def write_dicom_series(folder: Path, array: np.ndarray, affine: np.ndarray, uid: str) -> None:
    folder.mkdir(exist_ok=True)
    volume = sitk_image(array, affine)
    direction = volume.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(array.shape[2]):
        section = volume[:, :, z]
        tags = {
            "0008|0060": "CT",
            "0020|000e": uid,
            "0020|0013": str(z + 1),
            "0020|0032": "\\".join(map(str, volume.TransformIndexToPhysicalPoint((0, 0, z)))),
            "0020|0037": "\\".join(map(str, (*direction[0::3], *direction[1::3]))),
        }
        for tag, value in tags.items():
            section.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{uid[-4:]}_{z:03d}.dcm"))
        writer.Execute(section)


def test_dicom_series_folder_reads_the_largest_series_in_nibabel_convention(tmp_path):
    array = np.random.default_rng(1).integers(-500, 1500, (12, 10, 6)).astype(np.int16)
    affine = oblique_affine(spacing=(0.7, 0.7, 2.5))
    write_dicom_series(tmp_path / "series", array, affine, "1.2.826.0.1.3680043.2.1125.1.1001")
    scout = np.zeros((12, 10, 2), dtype=np.int16)
    write_dicom_series(tmp_path / "series", scout, affine, "1.2.826.0.1.3680043.2.1125.1.2002")
    data, meta = read(SimpleITKReader(), tmp_path / "series")
    np.testing.assert_array_equal(data, array)
    np.testing.assert_allclose(meta["affine"], affine, atol=1e-4)


PYDICOM_FILES = ["CT_small.dcm", "MR_small.dcm", "MR_small_bigendian.dcm", "MR_small_RLE.dcm"]


@pytest.mark.parametrize("name", PYDICOM_FILES)
def test_pydicom_test_files_match_pydicom_pixels_and_geometry(name):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file
    from pydicom.pixels import apply_modality_lut

    path = get_testdata_file(name)
    dataset = pydicom.dcmread(path)
    data, meta = read(SimpleITKReader(), path)
    expected = apply_modality_lut(dataset.pixel_array, dataset)
    np.testing.assert_allclose(data[..., 0], expected.T)
    rows, columns = np.split(np.array(dataset.ImageOrientationPatient, dtype=float), 2)
    row_spacing, column_spacing = (float(v) for v in dataset.PixelSpacing)
    np.testing.assert_allclose(meta["affine"][:3, 0], LPS @ rows * column_spacing, atol=1e-5)
    np.testing.assert_allclose(meta["affine"][:3, 1], LPS @ columns * row_spacing, atol=1e-5)
    np.testing.assert_allclose(
        meta["affine"][:3, 3], LPS @ np.array(dataset.ImagePositionPatient, float), atol=1e-4
    )


@pytest.mark.parametrize("name", ["MR_truncated.dcm", "rtplan.dcm"])
def test_pydicom_files_without_usable_pixels_raise(name):
    pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    with pytest.raises(RuntimeError, match="Unable to determine ImageIO reader"):
        SimpleITKReader().read(get_testdata_file(name))


def test_tiff_stack_pages_become_the_last_axis_with_imagej_spacing(tmp_path):
    stack = np.random.default_rng(2).integers(0, 255, (5, 9, 11)).astype(np.uint8)  # z, y, x
    tifffile.imwrite(
        tmp_path / "stack.tif",
        stack,
        imagej=True,
        resolution=(250.0, 250.0),
        metadata={"spacing": 0.05, "unit": "micron", "axes": "ZYX"},
    )
    tifffile.imwrite(tmp_path / "plain.tif", stack, photometric="minisblack")
    data, meta = read(TiffReader(), tmp_path / "stack.tif")
    np.testing.assert_array_equal(data, stack.transpose(2, 1, 0))
    np.testing.assert_allclose(np.diag(meta["affine"]), [4e-6, 4e-6, 5e-5, 1])  # mm
    plain, plain_meta = read(TiffReader(), tmp_path / "plain.tif")
    np.testing.assert_array_equal(plain, data)
    np.testing.assert_array_equal(plain_meta["affine"], np.eye(4))


def test_colour_tiff_keeps_channels_last_and_resolution_in_cm(tmp_path):
    rgb = np.random.default_rng(3).integers(0, 255, (6, 8, 3)).astype(np.uint8)
    tifffile.imwrite(
        tmp_path / "rgb.tif", rgb, resolution=(20.0, 40.0), resolutionunit="CENTIMETER"
    )
    data, meta = read(TiffReader(), tmp_path / "rgb.tif")
    assert data.shape == (8, 6, 3)
    np.testing.assert_array_equal(data[..., 1], rgb[..., 1].T)
    assert meta["original_channel_dim"] == -1
    assert list(meta["spatial_shape"]) == [8, 6]
    np.testing.assert_allclose(np.diag(meta["affine"])[:2], [0.5, 0.25])


def test_load_image_picks_the_reader_by_format(tmp_path, oblique):
    folder, array, _ = oblique
    stack = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    Image.fromarray(np.full((3, 5), 255, dtype=np.uint8)).save(tmp_path / "mask.png")
    load = LoadImaged(["image"], reader=image_readers(), ensure_channel_first=True, image_only=True)
    plain = LoadImaged(["image"], ensure_channel_first=True, image_only=True)
    nifti = load({"image": folder / "image.nii.gz"})["image"]
    reference = plain({"image": folder / "image.nii.gz"})["image"]
    np.testing.assert_array_equal(nifti.numpy(), reference.numpy())
    assert "sform_code" in nifti.meta  # nibabel's header, so NibabelReader read it
    assert load({"image": tmp_path / "stack.tif"})["image"].shape == (1, 4, 3, 2)
    assert load({"image": tmp_path / "mask.png"})["image"].shape == (1, 5, 3)
    mha = load({"image": folder / "image.mha"})["image"]
    np.testing.assert_array_equal(mha[0].numpy(), array)
    np.testing.assert_allclose(mha.affine.numpy(), reference.affine.numpy(), atol=1e-5)


@pytest.mark.parametrize("name", ["anatomical.nii", "example4d.nii.gz", "standard.nii.gz"])
def test_nibabel_test_files_read_alike_through_simpleitk(name):
    path = Path(nib.__file__).parent / "tests" / "data" / name
    expected, expected_meta = read(NibabelReader(), path)
    data, meta = read(SimpleITKReader(), path)
    assert data.shape == expected.shape
    np.testing.assert_allclose(data, expected, rtol=1e-6)
    np.testing.assert_allclose(meta["affine"], expected_meta["affine"], atol=1e-4)
