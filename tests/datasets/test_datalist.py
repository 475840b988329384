"""MONAI-style datalists: sections, ids, channels, and no path outside the dataset root."""

from __future__ import annotations

import json

import pytest

from medseg.datasets.base import DatasetIndex
from medseg.datasets.datalist import load_datalist, resolve_inside
from medseg.datasets.lits import LABELS
from medseg.datasets.validation import validate
from medseg.errors import ConfigError


def write(path, data):
    path.write_text(json.dumps(data))
    return path


def test_reads_every_section_with_ids_channels_and_labels(tmp_path):
    datalist = write(
        tmp_path / "datalist.json",
        {
            "training": [{"image": ["a/t1.nii.gz", "a/t2.nii.gz"], "label": "a/seg.nii.gz"}],
            "validation": [{"id": "case-b", "image": "b.nii.gz", "label": "b_seg.nii.gz"}],
            "test": ["c.nii.gz"],
        },
    )
    cases = load_datalist(datalist, tmp_path)
    assert [(c.id, c.label) for c in cases] == [
        ("t1", tmp_path / "a" / "seg.nii.gz"),
        ("case-b", tmp_path / "b_seg.nii.gz"),
        ("c", None),
    ]
    assert cases[0].image == (tmp_path / "a" / "t1.nii.gz", tmp_path / "a" / "t2.nii.gz")
    assert [c.id for c in load_datalist(datalist, tmp_path, sections=("test",))] == ["c"]


def test_paths_leaving_the_root_are_refused_all_at_once(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    datalist = write(
        tmp_path / "datalist.json",
        {
            "training": [
                {"image": "../secret.nii.gz", "label": "ok.nii.gz"},
                {"image": "ok.nii.gz", "label": "/etc/passwd"},
                {"image": str(root / "inside.nii.gz")},
                {"image": "sub/../../data/also_inside.nii.gz"},
            ]
        },
    )
    with pytest.raises(ConfigError) as error:
        load_datalist(datalist, root)
    message = str(error.value)
    assert "training[0]: ../secret.nii.gz: path leaves the dataset root" in message
    assert "training[1]: /etc/passwd: path leaves the dataset root" in message
    assert "training[2]" not in message and "training[3]" not in message
    assert resolve_inside(root, "sub/../../data/x.nii") == root / "x.nii"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{broken", "cannot read datalist"),
        ('{"cases": []}', "needs a list under training"),
        ('{"training": [{"label": "x.nii"}]}', "expected a path or"),
        ('{"training": [{"image": []}]}', "non-empty list of paths"),
        ('{"training": [{"image": "x.nii", "label": 3}]}', "'label' must be a path"),
        ('{"training": {"image": "x.nii"}}', "'training' must be a list"),
    ],
)
def test_malformed_datalists_are_refused(tmp_path, content, message):
    (tmp_path / "datalist.json").write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_datalist(tmp_path / "datalist.json", tmp_path)


def test_datalist_cases_are_validated_like_discovered_ones(tmp_path, phantom_roots):
    root = phantom_roots["lits"]
    entries = [{"image": "volume-0.nii", "label": "segmentation-0.nii"}] * 2
    cases = load_datalist(write(tmp_path / "list.json", {"training": entries}), root)
    index = DatasetIndex("lits", root, cases, ("ct",), "ct", LABELS)
    assert {p.reason.split(" (")[0] for p in validate(index)} == {"duplicate case id"}
