"""Decathlon and nnU-Net roots: dataset.json in all its forms, per-channel files, safe paths."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from medseg.datasets import discover
from medseg.datasets.msd import label_scheme
from medseg.errors import ConfigError


def edit_json(root, **changes):
    path = root / "dataset.json"
    data = json.loads(path.read_text()) | changes
    path.write_text(json.dumps(data))


def test_decathlon_root_gives_4d_cases_named_by_dataset_json(phantom_roots):
    root = phantom_roots["msd"]
    index = discover("msd", root)
    assert [c.id for c in index.cases] == ["BRATS_001", "BRATS_002"]
    assert index.cases[0].image == (root / "imagesTr" / "BRATS_001.nii.gz",)
    assert index.cases[0].label == root / "labelsTr" / "BRATS_001.nii.gz"
    assert index.channels == ("FLAIR", "T1w", "t1gd", "T2w")
    assert index.modality == "mri"
    assert index.labels.mode == "classes"
    assert index.labels.names == ("background", "edema", "non-enhancing tumor", "enhancing tumour")
    assert nib.load(index.cases[0].image[0]).shape == (32, 32, 24, 4)
    test = discover("msd", root, need_labels=False).cases
    assert [(c.id, c.label) for c in test[2:]] == [("BRATS_003", None)]


def test_nnunet_v2_root_gives_one_file_per_channel_and_regions(phantom_roots):
    root = phantom_roots["nnunet"]
    index = discover("msd", root)
    assert [c.id for c in index.cases] == ["BRATS_001", "BRATS_002"]
    assert [p.name for p in index.cases[1].image] == [f"BRATS_002_{k:04d}.nii.gz" for k in range(4)]
    scheme = index.labels
    assert scheme.mode == "regions"
    assert scheme.names == ("whole tumor", "tumor core", "enhancing tumor")
    assert scheme.values == ((1, 2, 3), (2, 3), (3,))
    assert (scheme.paint, scheme.paint_order) == ((1, 2, 3), (0, 1, 2))
    labels = np.asarray(nib.load(index.cases[0].label).dataobj)
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    assert [c.id for c in discover("msd", root, need_labels=False).cases][-1] == "BRATS_003"


def test_nnunet_v1_lists_names_whose_files_are_split_per_channel(tmp_path, phantom_roots):
    shutil.copytree(phantom_roots["nnunet"], tmp_path / "Task001")
    root = tmp_path / "Task001"
    training = [
        {"image": f"./imagesTr/BRATS_00{n}.nii.gz", "label": f"./labelsTr/BRATS_00{n}.nii.gz"}
        for n in (1, 2)
    ]
    edit_json(root, modality={"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}, training=training)
    (root / "imagesTr" / "BRATS_002_0001.nii.gz").unlink()
    index = discover("msd", root)
    assert [c.id for c in index.cases] == ["BRATS_001"]
    assert len(index.cases[0].image) == 4
    (problem,) = index.problems
    assert problem.reason == "channel 1 (T1w) missing (expected BRATS_002_0001.nii.gz)"


def test_nnunet_v2_missing_files_are_named(copy_of):
    root = copy_of("nnunet")
    (root / "imagesTr" / "BRATS_001_0003.nii.gz").unlink()
    (root / "labelsTr" / "BRATS_002.nii.gz").unlink()
    shutil.copy(root / "labelsTr" / "BRATS_001.nii.gz", root / "labelsTr" / "BRATS_009.nii.gz")
    (root / "imagesTr" / "._BRATS_001_0000.nii.gz").write_bytes(b"macOS resource fork")
    index = discover("msd", root)
    assert index.cases == []
    assert sorted((p.path.name, p.reason) for p in index.problems) == [
        ("BRATS_001_0003.nii.gz", "channel file missing"),
        ("BRATS_002.nii.gz", "label missing"),
        ("BRATS_009.nii.gz", "label without an image in imagesTr"),
    ]


@pytest.mark.parametrize(
    "escape", ["../outside.nii.gz", "/etc/hostname", "imagesTr/../../x.nii.gz"]
)
def test_paths_in_dataset_json_must_stay_inside_the_root(copy_of, escape):
    root = copy_of("msd")
    data = json.loads((root / "dataset.json").read_text())
    data["training"][1]["image"] = escape
    (root / "dataset.json").write_text(json.dumps(data))
    index = discover("msd", root)
    assert [c.id for c in index.cases] == ["BRATS_001"]
    (problem,) = index.problems
    assert "leaves the dataset root" in problem.reason
    assert str(problem.path) == escape


def test_absolute_paths_inside_the_root_are_fine(copy_of):
    root = copy_of("msd")
    data = json.loads((root / "dataset.json").read_text())
    data["training"][0]["image"] = str(root / "imagesTr" / "BRATS_001.nii.gz")
    (root / "dataset.json").write_text(json.dumps(data))
    assert len(discover("msd", root).cases) == 2


def test_ct_channel_makes_a_ct_dataset(copy_of):
    root = copy_of("msd")
    edit_json(root, modality={"0": "CT"}, labels={"0": "background", "1": "liver"})
    index = discover("msd", root)
    assert (index.modality, index.channels, index.labels.names) == (
        "ct",
        ("CT",),
        ("background", "liver"),
    )


def test_both_label_forms_give_classes_ordered_by_value():
    msd = label_scheme({"2": "cancer", "0": "background", "1": "liver"}, None, "x")
    nnunet = label_scheme({"background": 0, "cancer": 2, "liver": 1}, None, "x")
    assert msd == nnunet
    assert msd.names == ("background", "liver", "cancer")


@pytest.mark.parametrize(
    ("labels", "order", "message"),
    [
        ({"background": 0, "tumour": [1, 2]}, None, "regions_class_order"),
        ({"background": 0, "tumour": [1, 2]}, [1, 2], "regions_class_order"),
        ({"background": 0, "tumour": ["a"]}, [1], "positive integer values"),
        ({"liver": 1, "tumour": 2}, None, "background of value 0"),
        ({"background": 0, "liver": "one"}, None, "integer values"),
    ],
)
def test_unusable_labels_are_refused_clearly(labels, order, message):
    with pytest.raises(ConfigError, match=message):
        label_scheme(labels, order, "dataset.json")


def test_root_without_dataset_json_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"no dataset\.json"):
        discover("msd", tmp_path)
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable"):
        discover("msd", tmp_path)


def test_malformed_training_entries_are_problems_of_dataset_json(copy_of):
    root = copy_of("msd")
    data = json.loads((root / "dataset.json").read_text())
    data["training"] += [7, {"image": ["a", "b"]}]
    (root / "dataset.json").write_text(json.dumps(data))
    index = discover("msd", root)
    assert len(index.cases) == 2
    assert [(p.case_id, p.path.name) for p in index.problems] == [
        ("entry 2", "dataset.json"),
        ("entry 3", "dataset.json"),
    ]
