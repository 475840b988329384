"""Validation: every kind of broken case is found, all at once, with the file named."""

from __future__ import annotations

import gzip
import os
import shutil
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from medseg.datasets import discover
from medseg.datasets.validation import validate

from .conftest import PHANTOMS


def truncate(path: Path, keep: float = 0.6) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def only_problem(index, path: Path) -> str:
    problems = validate(index)
    assert [p.path for p in problems] == [path], [str(p) for p in problems]
    assert str(path) in str(problems[0])
    return problems[0].reason


@pytest.mark.parametrize("written", PHANTOMS)
def test_clean_phantoms_of_every_layout_have_no_problem(phantom_roots, written):
    layout = PHANTOMS[written][0]
    index = discover(layout, phantom_roots[written], validate=True)
    assert index.problems == []
    assert len(index.cases) == PHANTOMS[written][2]


@pytest.mark.parametrize("written", PHANTOMS)
def test_truncated_file_of_every_layout_is_found(copy_of, written):
    layout = PHANTOMS[written][0]
    index = discover(layout, copy_of(written))
    image = index.cases[0].image[-1]
    truncate(image)
    reason = only_problem(index, image)
    assert "truncated" in reason or "incomplete" in reason


@pytest.mark.parametrize("written", PHANTOMS)
def test_garbage_in_place_of_an_image_is_unreadable(copy_of, written):
    layout = PHANTOMS[written][0]
    index = discover(layout, copy_of(written))
    image = index.cases[1].image[0]
    image.write_bytes(np.random.default_rng(0).bytes(4000))
    assert only_problem(index, image).startswith("unreadable")


def test_simpleitk_reads_a_truncated_nifti_silently_so_bytes_are_counted(copy_of):
    index = discover("lits", copy_of("lits"))
    volume = index.cases[0].image[0]
    truncate(volume, 0.5)
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(volume))).size > 0  # zeros, no error
    assert nib.load(volume).shape  # header only, no error
    assert "header says" in only_problem(index, volume)


def test_gzip_of_garbage_and_wrong_magic_are_unreadable(copy_of, phantom_roots):
    index = discover("brats", copy_of("brats"))
    flair, t1 = index.cases[0].image[:2]
    flair.write_bytes(gzip.compress(np.random.default_rng(1).bytes(5000)))
    shutil.copy(next(phantom_roots["isic"].rglob("*.png")), t1)
    problems = {p.path: p.reason for p in validate(index)}
    assert set(problems) == {flair, t1}
    assert all(reason.startswith("unreadable") for reason in problems.values())


def test_corrupt_gzip_stream_is_found(copy_of):
    index = discover("brats", copy_of("brats"))
    t2 = index.cases[0].image[3]
    data = bytearray(t2.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
    t2.write_bytes(bytes(data))
    assert "compressed data" in only_problem(index, t2)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_file_without_read_permission(copy_of):
    index = discover("lits", copy_of("lits"))
    label = index.cases[0].label
    label.chmod(0)
    assert "permission denied" in only_problem(index, label)


def patch_scale(path: Path, slope: float, inter: float) -> None:
    """Write scl_slope and scl_inter straight into a NIfTI-1 header (bytes 112-119)."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as handle:
        data = bytearray(handle.read())
    data[112:120] = struct.pack("<ff", slope, inter)
    with opener(path, "wb") as handle:
        handle.write(bytes(data))


@pytest.mark.parametrize(
    ("slope", "inter"), [(np.nan, 3.0), (np.inf, 0.0), (1.0, np.nan), (2.0, -np.inf)]
)
def test_non_finite_header_scale_is_found(copy_of, slope, inter):
    index = discover("lits", copy_of("lits"))
    volume = index.cases[1].image[0]
    patch_scale(volume, slope, inter)
    assert "not finite" in only_problem(index, volume)


def test_unset_scale_as_nibabel_writes_it_is_fine(phantom_roots):
    volume = phantom_roots["lits"] / "volume-0.nii"
    assert np.isnan(nib.load(volume).header["scl_slope"])
    assert validate(discover("lits", phantom_roots["lits"])) == []


def load(path: Path):
    """Without memory mapping: the tests write over the files they read."""
    return nib.load(path, mmap=False)


def rewrite(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(data, affine), path)


def test_shape_mismatch_between_image_and_label(copy_of):
    index = discover("lits", copy_of("lits"))
    label = index.cases[0].label
    original = load(label)
    rewrite(label, np.asarray(original.dataobj)[:, :, :-1], original.affine)
    reason = only_problem(index, label)
    assert "shape (64, 64, 39) differs from volume-0.nii (64, 64, 40)" in reason


def test_affine_mismatch_beyond_tolerance_only(copy_of):
    index = discover("lits", copy_of("lits"))
    labels = [case.label for case in index.cases]
    for label, shift in zip(labels, (0.05, 2e-5), strict=True):
        original = load(label)
        moved = original.affine.copy()
        moved[0, 3] += shift
        rewrite(label, np.asarray(original.dataobj), moved)
    reason = only_problem(index, labels[0])
    assert "affine differs from volume-0.nii by 0.05" in reason


def test_channels_of_one_case_must_share_their_grid(copy_of):
    index = discover("msd", copy_of("nnunet"))
    channel = index.cases[0].image[2]
    original = load(channel)
    rewrite(channel, np.asarray(original.dataobj)[1:], original.affine)
    assert "image shape (31, 32, 24) differs from BRATS_001_0000.nii.gz" in only_problem(
        index, channel
    )


def test_missing_channel_in_a_4d_image(copy_of):
    index = discover("msd", copy_of("msd"))
    image = index.cases[1].image[0]
    original = load(image)
    rewrite(image, np.asarray(original.dataobj)[..., :3], original.affine)
    reason = only_problem(index, image)
    assert reason == "3 image channels, the dataset has 4 (FLAIR, T1w, t1gd, T2w)"


def test_label_values_outside_the_layout_set(copy_of):
    index = discover("lits", copy_of("lits"))
    label = index.cases[1].label
    original = load(label)
    data = np.asarray(original.dataobj).copy()
    data[0, 0, 0], data[1, 0, 0] = 7, 4
    rewrite(label, data, original.affine)
    assert "label values 4, 7 outside the layout's set [0, 1, 2]" in only_problem(index, label)
    assert validate(index, label_check=False) == []


def test_duplicate_ids_are_reported_and_left_out(copy_of):
    root = copy_of("lits")
    (root / "Training Batch 2").mkdir()
    for name in ("volume-1.nii", "segmentation-1.nii"):
        shutil.copy(root / name, root / "Training Batch 2" / name)
    index = discover("lits", root)
    assert [c.id for c in index.cases] == ["volume-0"]
    assert sorted(p.path for p in index.problems) == [
        root / "Training Batch 2" / "volume-1.nii",
        root / "volume-1.nii",
    ]
    assert "duplicate case id" in index.problems[0].reason


def test_every_bad_case_is_reported_at_once_and_the_good_ones_kept(copy_of):
    root = copy_of("isic")
    index = discover("isic", root)
    image, mask = index.cases[0].image[0], index.cases[1].label
    truncate(image, 0.5)
    Image.new("L", (10, 10)).save(mask)
    result = discover("isic", root, validate=True)
    assert result.cases == []
    assert {p.path for p in result.problems} == {image, mask}
