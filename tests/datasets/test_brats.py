"""BraTS layouts: discovery of both releases, problems named by file, realistic phantoms."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest

from medseg.datasets import discover
from medseg.datasets.synthetic import synthesize
from medseg.errors import ConfigError


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    root = tmp_path_factory.mktemp("brats21")
    synthesize("brats", root, cases=3, shape=(48, 52, 40), seed=3)
    return root


def test_discovers_2021_cases_with_channels_in_order(phantoms):
    index = discover("brats", phantoms)
    assert [c.id for c in index.cases] == ["BraTS2021_00000", "BraTS2021_00001", "BraTS2021_00002"]
    case = index.cases[1]
    assert [p.name for p in case.image] == [
        f"BraTS2021_00001_{m}.nii.gz" for m in ("flair", "t1", "t1ce", "t2")
    ]
    assert case.label.name == "BraTS2021_00001_seg.nii.gz"
    assert index.channels == ("flair", "t1", "t1ce", "t2")
    assert index.labels.names == ("TC", "WT", "ET")
    assert index.labels.values == ((1, 4), (1, 2, 4), (4,))
    assert index.datalist()[0]["image"][0].endswith("_flair.nii.gz")


def test_reads_the_2023_naming_with_the_same_channel_order(tmp_path, phantoms):
    renames = {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w", "seg": "seg"}
    folder = tmp_path / "BraTS-GLI-00007-001"
    folder.mkdir()
    for old, new in renames.items():
        shutil.copy(
            phantoms / "BraTS2021_00000" / f"BraTS2021_00000_{old}.nii.gz",
            folder / f"{folder.name}-{new}.nii.gz",
        )
    index = discover("brats", tmp_path)
    (case,) = index.cases
    assert [p.name.split("-")[-1] for p in case.image] == [
        "t2f.nii.gz",
        "t1n.nii.gz",
        "t1c.nii.gz",
        "t2w.nii.gz",
    ]
    assert index.labels.values[2] == (3,)


def test_a_case_folder_alone_is_one_case(phantoms):
    index = discover("brats", phantoms / "BraTS2021_00002")
    assert [c.id for c in index.cases] == ["BraTS2021_00002"]


def test_missing_modality_is_reported_with_the_file(tmp_path, phantoms):
    shutil.copytree(phantoms, tmp_path / "data")
    missing = tmp_path / "data" / "BraTS2021_00001" / "BraTS2021_00001_t1ce.nii.gz"
    missing.unlink()
    index = discover("brats", tmp_path / "data")
    assert [c.id for c in index.cases] == ["BraTS2021_00000", "BraTS2021_00002"]
    (problem,) = index.problems
    assert problem.path == missing
    assert "modality file missing" in str(problem)


def test_missing_segmentation_allowed_only_for_inference(tmp_path, phantoms):
    shutil.copytree(phantoms / "BraTS2021_00000", tmp_path / "BraTS2021_00000")
    (tmp_path / "BraTS2021_00000" / "BraTS2021_00000_seg.nii.gz").unlink()
    assert discover("brats", tmp_path).problems[0].reason == "segmentation file missing"
    assert discover("brats", tmp_path, need_labels=False).cases[0].label is None


def test_folder_without_brats_cases_is_refused(tmp_path):
    (tmp_path / "patient1").mkdir()
    with pytest.raises(ConfigError, match="no BraTS case folders"):
        discover("brats", tmp_path)


def test_phantom_files_follow_the_release_conventions(phantoms):
    folder = phantoms / "BraTS2021_00000"
    seg = nib.load(folder / "BraTS2021_00000_seg.nii.gz")
    labels = np.asarray(seg.dataobj)
    assert seg.get_data_dtype() == np.uint8
    assert set(np.unique(labels)) == {0, 1, 2, 4}
    assert seg.header.get_zooms() == (1.0, 1.0, 1.0)
    assert nib.aff2axcodes(seg.affine) == ("L", "P", "S")
    for sequence in ("flair", "t1", "t1ce", "t2"):
        image = nib.load(folder / f"BraTS2021_00000_{sequence}.nii.gz")
        assert image.get_data_dtype() == np.int16
        np.testing.assert_array_equal(image.affine, seg.affine)


def test_phantom_tumour_contrasts_differ_by_sequence_as_in_real_scans(phantoms):
    folder = phantoms / "BraTS2021_00001"
    labels = np.asarray(nib.load(folder / "BraTS2021_00001_seg.nii.gz").dataobj)
    mean = {
        s: {
            v: np.asarray(nib.load(folder / f"BraTS2021_00001_{s}.nii.gz").dataobj)[
                labels == v
            ].mean()
            for v in (1, 2, 4)
        }
        for s in ("flair", "t1", "t1ce", "t2")
    }
    brain = {
        s: np.asarray(nib.load(folder / f"BraTS2021_00001_{s}.nii.gz").dataobj)[labels == 0]
        for s in ("flair", "t2")
    }
    assert mean["flair"][2] > np.percentile(brain["flair"][brain["flair"] > 0], 90)  # oedema bright
    assert mean["t2"][2] > np.median(brain["t2"][brain["t2"] > 0])
    assert mean["t1ce"][4] > 1.5 * mean["t1ce"][2]  # enhancing rim
    assert mean["t1ce"][1] < 0.7 * mean["t1ce"][4]  # necrotic core dark inside the bright rim
    assert mean["flair"][1] < mean["flair"][2]


def test_phantoms_are_reproducible_per_case(tmp_path):
    synthesize("brats", tmp_path / "a", cases=2, shape=(24, 24, 20), seed=5)
    synthesize("brats", tmp_path / "b", cases=1, shape=(24, 24, 20), seed=5)
    first = nib.load(tmp_path / "a" / "BraTS2021_00000" / "BraTS2021_00000_t2.nii.gz").get_fdata()
    again = nib.load(tmp_path / "b" / "BraTS2021_00000" / "BraTS2021_00000_t2.nii.gz").get_fdata()
    np.testing.assert_array_equal(first, again)


@pytest.mark.slow
def test_generator_makes_full_size_volumes(tmp_path):
    (folder,) = synthesize("brats", tmp_path, cases=1, seed=0)
    assert nib.load(folder / f"{folder.name}_flair.nii.gz").shape == (240, 240, 155)
