"""EM stacks: the ISBI 2012 layout, membrane scoring, and cell-and-membrane phantoms."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch

from medseg.datasets import discover
from medseg.datasets.em import LABELS
from medseg.errors import ConfigError
from medseg.transforms.labels import labels_to_target, paint_labels
from medseg.transforms.readers import TiffReader


def test_discovers_isbi_stacks_as_3d_cases(phantom_roots):
    root = phantom_roots["em"]
    index = discover("em", root)
    assert [c.id for c in index.cases] == ["train", "train-01"]
    assert index.cases[0].image == (root / "train-volume.tif",)
    assert index.cases[0].label == root / "train-labels.tif"
    assert (index.channels, index.modality, index.spatial_dims) == (("em",), "em", 3)
    unlabelled = discover("em", root, need_labels=False).cases
    assert [(c.id, c.label) for c in unlabelled if c.id == "test"] == [("test", None)]


def test_membrane_is_the_scored_structure_and_paints_back_as_isbi_values():
    scheme = LABELS
    assert scheme.foreground == {"membrane": (0,)}
    label = torch.tensor([[[0, 255], [255, 0]]], dtype=torch.uint8)
    target = labels_to_target(label, scheme)
    assert target.tolist() == [[[1.0, 0.0], [0.0, 1.0]]]
    probability = torch.nn.functional.one_hot(target[0].long(), 2).permute(2, 0, 1).float()
    np.testing.assert_array_equal(paint_labels(probability, scheme), label[0].numpy())


def test_phantom_stacks_are_isbi_tiffs(phantom_roots):
    with tifffile.TiffFile(phantom_roots["em"] / "train-volume.tif") as tif:
        assert len(tif.pages) == 8
        assert tif.pages.first.dtype == np.uint8
        assert tif.pages.first.shape == (64, 64)
    labels = tifffile.imread(phantom_roots["em"] / "train-labels.tif")
    assert set(np.unique(labels)) == {0, 255}
    image, meta = TiffReader().get_data(TiffReader().read(phantom_roots["em"] / "train-volume.tif"))
    assert image.shape == (64, 64, 8)
    np.testing.assert_allclose(np.diag(meta["affine"])[:3], [4e-6, 4e-6, 5e-5])  # 4x4x50 nm


def test_phantom_membranes_are_dark_lines_among_bright_cells_with_dark_organelles(phantom_roots):
    image = tifffile.imread(phantom_roots["em"] / "train-volume.tif").astype(float)
    labels = tifffile.imread(phantom_roots["em"] / "train-labels.tif")
    membrane, cell = image[labels == 0], image[labels == 255]
    assert 0.05 < (labels == 0).mean() < 0.35
    assert membrane.mean() < cell.mean() - 50
    assert np.mean(cell < membrane.mean()) > 0.005  # organelles: dark but not membrane
    consecutive = [
        np.mean(labels[k] == labels[k + 1]) for k in range(labels.shape[0] - 1)
    ]  # neurites continue across sections
    assert min(consecutive) > 0.75


def test_nifti_volumes_and_missing_partners(tmp_path, phantom_roots):
    stack = tifffile.imread(phantom_roots["em"] / "train-labels.tif").transpose(2, 1, 0)
    nib.save(nib.Nifti1Image(stack, np.eye(4)), tmp_path / "cremi_a-volume.nii.gz")
    nib.save(nib.Nifti1Image(stack, np.eye(4)), tmp_path / "cremi_a-labels.nii.gz")
    shutil.copy(phantom_roots["em"] / "train-volume.tif", tmp_path / "orphan-volume.tif")
    shutil.copy(phantom_roots["em"] / "train-labels.tif", tmp_path / "lonely-labels.tif")
    index = discover("em", tmp_path)
    assert [c.id for c in index.cases] == ["cremi_a"]
    assert sorted((p.path.name, p.reason) for p in index.problems) == [
        ("lonely-labels.tif", "volume missing (expected lonely-volume)"),
        ("orphan-labels.tif", "labels missing for orphan-volume.tif"),
    ]


def test_folder_without_stacks_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="no EM stacks"):
        discover("em", tmp_path)
