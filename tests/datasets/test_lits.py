"""LiTS: discovery across batch folders, problems named by file, CT phantoms in HU."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest

from medseg.datasets import discover
from medseg.datasets.synthetic import synthesize
from medseg.errors import ConfigError


def test_discovers_volumes_with_their_segmentations(phantom_roots):
    root = phantom_roots["lits"]
    index = discover("lits", root)
    assert [c.id for c in index.cases] == ["volume-0", "volume-1"]
    assert index.cases[1].image == (root / "volume-1.nii",)
    assert index.cases[1].label == root / "segmentation-1.nii"
    assert index.channels == ("ct",)
    assert index.modality == "ct"
    assert index.labels.names == ("background", "liver", "tumour")
    assert index.labels.values == ((0,), (1,), (2,))
    assert index.datalist()[0] == {
        "id": "volume-0",
        "image": [str(root / "volume-0.nii")],
        "label": str(root / "segmentation-0.nii"),
    }


def test_reads_the_release_batch_folders_and_test_volumes(tmp_path, phantom_roots):
    source = phantom_roots["lits"]
    for number, batch in ((0, "Training Batch 1"), (1, "Training Batch 2")):
        (tmp_path / batch).mkdir()
        for kind in ("volume", "segmentation"):
            shutil.copy(source / f"{kind}-{number}.nii", tmp_path / batch / f"{kind}-{number}.nii")
    (tmp_path / "Test").mkdir()
    shutil.copy(source / "volume-0.nii", tmp_path / "Test" / "test-volume-3.nii")
    assert [c.id for c in discover("lits", tmp_path).cases] == ["volume-0", "volume-1"]
    inference = discover("lits", tmp_path, need_labels=False)
    assert [c.id for c in inference.cases] == ["volume-0", "volume-1", "test-volume-3"]
    assert inference.cases[2].label is None


def test_missing_files_are_named(copy_of):
    root = copy_of("lits")
    (root / "segmentation-0.nii").unlink()
    (root / "volume-1.nii").unlink()
    index = discover("lits", root)
    assert index.cases == []
    assert [(p.path.name, p.reason) for p in index.problems] == [
        (
            "segmentation-0.nii",
            "segmentation missing (expected segmentation-0.nii for volume-0.nii)",
        ),
        ("segmentation-1.nii", "volume missing (expected volume-1.nii beside segmentation-1.nii)"),
    ]
    assert [c.id for c in discover("lits", root, need_labels=False).cases] == ["volume-0"]


def test_folder_without_lits_files_is_refused(tmp_path):
    (tmp_path / "scan.nii").write_bytes(b"")
    with pytest.raises(ConfigError, match="no LiTS files"):
        discover("lits", tmp_path)


def test_phantom_files_follow_the_release_conventions(phantom_roots):
    for number in (0, 1):
        volume = nib.load(phantom_roots["lits"] / f"volume-{number}.nii")
        segmentation = nib.load(phantom_roots["lits"] / f"segmentation-{number}.nii")
        assert volume.get_data_dtype() == np.int16
        assert segmentation.get_data_dtype() == np.uint8
        assert set(np.unique(np.asarray(segmentation.dataobj))) <= {0, 1, 2}
        assert volume.affine[0, 0] < 0 and volume.affine[1, 1] < 0  # as the released volumes
        assert nib.aff2axcodes(volume.affine) == ("L", "P", "S")
        np.testing.assert_array_equal(volume.affine, segmentation.affine)
        spacing = volume.header.get_zooms()
        assert spacing[0] == spacing[1] != spacing[2]


def test_phantom_ct_has_the_tissues_of_an_abdomen_in_hounsfield_units(phantom_roots):
    root = phantom_roots["lits"]
    image = np.concatenate([np.asarray(nib.load(root / f"volume-{n}.nii").dataobj) for n in (0, 1)])
    labels = np.concatenate(
        [np.asarray(nib.load(root / f"segmentation-{n}.nii").dataobj) for n in (0, 1)]
    )
    liver, tumour = image[labels == 1], image[labels == 2]
    assert 45 < np.median(liver) < 75
    assert np.median(tumour) < np.median(liver) - 10  # tumours are darker
    outside = image[labels == 0]
    assert np.mean(outside < -900) > 0.2  # air around the body and in the lungs
    assert np.mean((outside > -160) & (outside < -50)) > 0.02  # fat
    assert np.mean(outside > 500) > 0.001  # bone
    assert np.mean(np.abs(outside) < 60) > 0.1  # soft tissue


def test_default_volumes_are_512_wide_with_a_slice_count_of_the_release(tmp_path, monkeypatch):
    import medseg.datasets.synthetic as synthetic

    drawn = []

    def record_shape(shape, rng):
        drawn.append(shape)
        return np.zeros((8, 8, 8), np.int16), np.zeros((8, 8, 8), np.uint8), (0.7, 0.7, 2.5)

    monkeypatch.setattr(synthetic, "lits_phantom", record_shape)
    synthesize("lits", tmp_path, cases=3, seed=0)
    assert all(shape[:2] == (512, 512) and 75 <= shape[2] <= 987 for shape in drawn)
    assert len({shape[2] for shape in drawn}) == 3
