"""The label table: defaults per layout, config restyling, storage in the model directory."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medseg.config import parse_config
from medseg.datasets.brats import RELEASES
from medseg.datasets.folder import scheme_from_labels
from medseg.datasets.lits import LABELS as LITS_LABELS
from medseg.errors import ConfigError
from medseg.pipelines.label_table import build_label_table, label_table, labels_with_table


def _run_config(label_table: dict) -> dict:
    return {
        "data": {"layout": "lits", "root": "data"},
        "network": {"name": "unetpp"},
        "label_table": label_table,
    }


@pytest.mark.parametrize(("release", "enhancing"), [(RELEASES[0], 4), (RELEASES[1], 3)])
def test_brats_values_are_named_as_predict_paints_them(release, enhancing: int) -> None:
    table = build_label_table(release.labels(), "brats")
    assert [(entry.value, entry.abbreviation) for entry in table] == [
        (1, "NCR"),
        (2, "ED"),
        (enhancing, "ET"),
    ]
    assert [entry.type.value for entry in table] == ["6574001", "79654002", "108369006"]
    assert {entry.category.meaning for entry in table} == {"Morphologically Abnormal Structure"}


def test_lits_labels_are_liver_and_liver_tumour() -> None:
    liver, tumour = build_label_table(LITS_LABELS, "lits")
    assert (liver.value, liver.name, liver.type.value) == (1, "Liver", "10200004")
    assert (tumour.value, tumour.name, tumour.type.meaning) == (2, "Liver tumour", "Neoplasm")


def test_other_layouts_get_scheme_names_generic_codes_and_distinct_colours() -> None:
    names = {"background": 0} | {f"structure_{k}": k for k in range(1, 10)}
    table = build_label_table(scheme_from_labels(names, "labels"), "folder")
    assert [entry.name for entry in table] == [f"structure_{k}" for k in range(1, 10)]
    assert [entry.value for entry in table] == list(range(1, 10))
    assert len({entry.colour for entry in table}) == 9
    assert {(entry.category.meaning, entry.type.meaning) for entry in table} == {
        ("Tissue", "Anatomical Structure")
    }


def test_config_restyles_one_label_and_keeps_the_other_defaults() -> None:
    config = parse_config(
        _run_config(
            {
                "tumour": {
                    "name": "HCC",
                    "colour": [10, 20, 30],
                    "type": {"value": "25370001", "meaning": "HCC"},
                }
            }
        ),
        "run.yaml",
    )
    liver, tumour = build_label_table(LITS_LABELS, "lits", config.label_table)
    assert (tumour.name, tumour.colour, tumour.type.value) == ("HCC", (10, 20, 30), "25370001")
    assert (tumour.type.scheme, tumour.abbreviation) == ("SCT", "tumour")
    assert liver == build_label_table(LITS_LABELS, "lits")[0]


def test_unknown_label_name_is_refused_with_its_key() -> None:
    config = parse_config(_run_config({"tumor": {"name": "Tumour"}}), "run.yaml")
    with pytest.raises(ConfigError, match=r"label_table\.tumor: unknown label.*liver, tumour"):
        build_label_table(LITS_LABELS, "lits", config.label_table)


@pytest.mark.parametrize(
    ("style", "key"),
    [
        ({"name": 'a "quoted" name'}, "label_table.liver.name"),
        ({"colour": [0, 0, 256]}, "label_table.liver.colour"),
        ({"colour": [0, 0]}, "label_table.liver.colour"),
        ({"category": {"value": "../x", "meaning": "x"}}, "label_table.liver.category.value"),
        ({"shade": "dark"}, "label_table.liver.shade"),
    ],
)
def test_bad_styles_are_refused_naming_the_key(style: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_config(_run_config({"liver": style}), "run.yaml")


def test_model_directory_keeps_its_stored_table(ct_model_dir: Path, tmp_path: Path) -> None:
    config_file = ct_model_dir / "config.yaml"
    raw = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    assert "table" not in raw["labels"]  # a model written before label tables: defaults
    assert [entry.name for entry in label_table(ct_model_dir)] == ["Liver", "Liver tumour"]

    config = parse_config(_run_config({"liver": {"name": "Hepar"}}), "run.yaml")
    raw["labels"] = labels_with_table(LITS_LABELS, "lits", config.label_table)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert [entry.name for entry in label_table(model)] == ["Hepar", "Liver tumour"]

    raw["labels"]["table"][1]["value"] = 7
    (model / "config.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"config\.yaml: labels\.table: values \[1, 7\]"):
        label_table(model)


def test_info_says_which_value_means_what(brats_model_dir: Path, medseg_cli) -> None:
    result = medseg_cli("info", brats_model_dir)
    assert result.code == 0
    text = " ".join(result.out.split())
    assert "4 │ Enhancing tumour (ET" in text
    assert "1 │ Necrotic tumour core (NCR" in text


def test_predict_writes_names_beside_and_inside_the_label_maps(
    ct_model_dir: Path, tmp_path: Path, medseg_cli
) -> None:
    import json

    import nibabel as nib
    import numpy as np

    volume = np.random.default_rng(0).normal(0, 100, (12, 12, 10)).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, np.diag([1.5, 1.5, 2.0, 1.0])), tmp_path / "ct.nii.gz")
    output = tmp_path / "out"
    assert medseg_cli("predict", ct_model_dir, tmp_path / "ct.nii.gz", "--output", output).code == 0

    header = nib.load(output / "ct.nii.gz").header
    assert header["descrip"].tobytes().rstrip(b"\0") == b"1=liver 2=tumour"
    itksnap = (output / "labels.itksnap.txt").read_text(encoding="utf-8").splitlines()
    assert '1 221 130 101 1 1 1 "Liver"' in itksnap
    assert '2 0 151 206 1 1 1 "Liver tumour"' in itksnap
    slicer = (output / "labels.ctbl").read_text(encoding="utf-8").splitlines()
    assert "2 Liver_tumour 0 151 206 255" in slicer
    report = json.loads((output / "predict_report.json").read_text(encoding="utf-8"))
    assert [(e["value"], e["name"]) for e in report["label_table"]] == [
        (1, "Liver"),
        (2, "Liver tumour"),
    ]
