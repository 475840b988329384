"""Issue 23, "one the corpus never tried": every NIfTI file nibabel ships for its own tests,
and variants of them with the header oddities real files have (a sheared sform-only affine
beside an unused quaternion that is not a rotation, a qform alone), gets its label map with
the input's own header geometry, field for field."""

from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"
SHIPPED = sorted(
    path
    for path in NIBABEL_DATA.glob("*.nii*")
    if isinstance(nib.load(path), nib.Nifti1Image | nib.Nifti2Image)
)
GEOMETRY = (
    "qform_code",
    "sform_code",
    "quatern_b",
    "quatern_c",
    "quatern_d",
    "qoffset_x",
    "qoffset_y",
    "qoffset_z",
    "srow_x",
    "srow_y",
    "srow_z",
)


def test_nibabel_ships_the_files_this_test_reads():
    assert len(SHIPPED) >= 6, SHIPPED


def sheared_sform_only(source: Path, target: Path) -> Path:
    """``source`` with a sheared sform (code 2), qform code 0 and a quaternion whose
    b^2 + c^2 + d^2 > 1, written into the header bytes as a real scanner export had it."""
    image = nib.load(source)
    affine = image.affine.copy()
    affine[0, 1] += 0.3 * abs(affine[1, 1])
    copy = type(image)(np.asarray(image.dataobj), affine, image.header)
    copy.set_sform(affine, code=2)
    copy.set_qform(None, code=0)
    nib.save(copy, target)
    raw = bytearray(target.read_bytes())
    if isinstance(copy, nib.Nifti1Image):
        order = "<" if struct.unpack("<i", raw[:4])[0] == 348 else ">"
        raw[256:264] = struct.pack(order + "ff", 0.9, 0.9)
    else:  # NIfTI-2: quatern_b, quatern_c are float64 at 352
        order = "<" if struct.unpack("<i", raw[:4])[0] == 540 else ">"
        raw[352:368] = struct.pack(order + "dd", 0.9, 0.9)
    target.write_bytes(bytes(raw))
    return target


def qform_only(source: Path, target: Path) -> Path:
    """``source`` with its sform code set to 0 in the header bytes (nibabel cannot itself
    rewrite the NIfTI-2 example's qform: its quaternion rounds to w^2 < 0)."""
    raw = source.read_bytes()
    raw = bytearray(gzip.decompress(raw) if source.name.endswith(".gz") else raw)
    order = "<" if struct.unpack("<i", raw[:4])[0] in (348, 540) else ">"
    if struct.unpack(order + "i", raw[:4])[0] == 348:
        raw[252:256] = struct.pack(order + "hh", 1, 0)  # qform_code, sform_code
    else:
        raw[344:352] = struct.pack(order + "ii", 1, 0)
    target.write_bytes(bytes(raw))
    return target


VARIANTS = {"as shipped": None, "sheared sform only": sheared_sform_only, "qform only": qform_only}


def variant(source: Path, kind: str, folder: Path) -> Path:
    folder.mkdir(exist_ok=True)
    if VARIANTS[kind] is None:
        return Path(shutil.copy(source, folder / source.name))
    # Uncompressed, so the header bytes can be patched in place.
    return VARIANTS[kind](source, folder / source.name.removesuffix(".gz"))


def assert_same_geometry(output: Path, reference: Path) -> None:
    written, source = nib.load(output).header, nib.load(reference).header
    for field in GEOMETRY:
        np.testing.assert_array_equal(written[field], source[field], err_msg=field)
    spatial = min(len(nib.load(reference).shape), 3)
    np.testing.assert_array_equal(written["pixdim"][: spatial + 1], source["pixdim"][: spatial + 1])
    assert nib.load(output).shape == nib.load(reference).shape[:spatial]


@pytest.mark.parametrize("kind", sorted(VARIANTS))
@pytest.mark.parametrize("source", SHIPPED, ids=lambda path: path.name)
def test_label_maps_keep_the_header_geometry_of_every_shipped_nifti(source, kind, tmp_path):
    from medseg.datasets.image_io import write_label_like

    reference = variant(source, kind, tmp_path / "in")
    shape = nib.load(reference).shape[:3]
    labels = (np.arange(np.prod(shape)) % 3).reshape(shape).astype(np.uint8)
    output = write_label_like(reference, labels, tmp_path / "label.nii.gz")
    assert_same_geometry(output, reference)
    assert np.array_equal(np.asarray(nib.load(output).dataobj), labels)


THREE_D = [path for path in SHIPPED if len(nib.load(path).shape) == 3]


@pytest.mark.parametrize("kind", ["as shipped", "sheared sform only"])
@pytest.mark.parametrize("source", THREE_D, ids=lambda path: path.name)
def test_predict_keeps_the_header_geometry_of_every_shipped_3d_nifti(
    source, kind, tmp_path, ct_model_dir, medseg_cli
):
    reference = variant(source, kind, tmp_path / "in")
    result = medseg_cli("predict", ct_model_dir, reference, "-o", tmp_path / "out")
    if not np.isfinite(nib.load(reference).get_fdata()).all():
        # resampled_anat_moved.nii holds NaN outside its field of view: refused by name.
        assert result.code == 1 and "NaN or infinite voxels" in result.out, result.out
        assert reference.name in result.out
        return
    assert result.code == 0, result.out + result.err
    output = (
        tmp_path / "out" / (reference.name.removesuffix(".gz").removesuffix(".nii") + ".nii.gz")
    )
    assert_same_geometry(output, reference)
