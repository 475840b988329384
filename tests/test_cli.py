"""The command line's contract: clear one-line errors and exit statuses, a fast --help."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

MEDSEG = str(Path(sys.executable).with_name("medseg"))
GOOD = {
    "data": {"layout": "brats", "root": "data"},
    "network": {"name": "unetpp", "preset": "tiny"},
}


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def test_help_answers_fast_without_heavy_imports():
    started = time.perf_counter()
    result = subprocess.run(
        [MEDSEG, "--help"], capture_output=True, text=True, encoding="utf-8", check=False
    )
    elapsed = time.perf_counter() - started
    assert result.returncode == 0
    assert "train" in result.stdout and "predict" in result.stdout
    assert elapsed < 3.0
    probe = "import sys, medseg.cli; print(sorted({'torch', 'monai', 'mlflow'} & set(sys.modules)))"
    imported = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, encoding="utf-8"
    )
    assert imported.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"train": {"epochs": 3, "epochz": 4}}, "train.epochz: unknown key"),
        ({"train": {"epochs": "many"}}, "train.epochs"),
        ({"train": {"lr": -1}}, "train.lr"),
        ({"data": {"layout": "nnunet", "root": "x"}}, "data.layout"),
        (
            {"data": {"layout": "brats", "root": "x", "fold": 7, "folds": 5}},
            "fold 7 does not exist",
        ),
    ],
)
def test_bad_config_is_one_line_naming_the_key_and_exits_2(tmp_path, medseg_cli, change, message):
    config = write_config(tmp_path / "bad.yaml", GOOD | change)
    result = medseg_cli("train", config)
    assert result.code == 2
    assert message in result.err
    assert str(config) in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert "Traceback" not in result.err


def test_set_overrides_reach_validation(tmp_path, medseg_cli):
    config = write_config(tmp_path / "good.yaml", GOOD)
    result = medseg_cli("train", config, "--set", "train.epochs=zero")
    assert result.code == 2
    assert "train.epochs" in result.err


def test_override_without_equals_is_refused(tmp_path, medseg_cli):
    config = write_config(tmp_path / "good.yaml", GOOD)
    result = medseg_cli("train", config, "--set", "train.epochs")
    assert result.code == 2
    assert "expected key=value" in result.err


def test_malformed_yaml_names_the_line(tmp_path, medseg_cli):
    config = tmp_path / "broken.yaml"
    config.write_text("data:\n  layout: brats\n   root: [unclosed\n")
    result = medseg_cli("train", config)
    assert result.code == 2
    assert "not valid YAML at line" in result.err


def test_missing_config_file_exits_2(tmp_path, medseg_cli):
    result = medseg_cli("train", tmp_path / "absent.yaml")
    assert result.code == 2
    assert "config file not found" in result.err


def test_missing_data_folder_exits_2(tmp_path, medseg_cli):
    config = GOOD | {"data": {"layout": "brats", "root": str(tmp_path / "nowhere")}}
    result = medseg_cli(
        "train", write_config(tmp_path / "c.yaml", config), "--set", f"output={tmp_path / 'run'}"
    )
    assert result.code == 2
    assert "nowhere: folder not found" in result.err
    assert not (tmp_path / "run").exists()


def test_missing_predict_input_exits_2(tmp_path, medseg_cli, brats_model_dir):
    result = medseg_cli(
        "predict", brats_model_dir, tmp_path / "absent", "--output", tmp_path / "out"
    )
    assert result.code == 2
    assert "absent: no such file or folder" in result.err
    assert not (tmp_path / "out").exists()


def test_missing_evaluate_folders_exit_2(tmp_path, medseg_cli):
    result = medseg_cli("evaluate", tmp_path / "preds", tmp_path / "refs")
    assert result.code == 2
    assert "not found" in result.err


def test_unknown_layout_for_synth_exits_2(tmp_path, medseg_cli):
    result = medseg_cli("synth", "kits", tmp_path / "out")
    assert result.code == 2
    assert "no phantom for layout 'kits'" in result.err


def test_synth_takes_the_shape_as_separate_sizes(tmp_path, medseg_cli):
    import nibabel as nib

    result = medseg_cli(
        "synth", "brats", tmp_path / "out", "--cases", "1", "--shape", "24", "20", "16"
    )
    assert result.code == 0, result.err
    image = nib.load(tmp_path / "out" / "BraTS2021_00000" / "BraTS2021_00000_t1.nii.gz")
    assert image.shape == (24, 20, 16)


def write_labels(path: Path, labels, spacing=(1.0, 1.0, 2.0)) -> Path:
    import nibabel as nib
    import numpy as np

    nib.save(nib.Nifti1Image(np.asarray(labels, dtype=np.uint8), np.diag([*spacing, 1.0])), path)
    return path


@pytest.mark.parametrize(
    ("rule", "expected"), [("diagonal", (4**2 + 4**2 + 8**2) ** 0.5), ("nan", None)]
)
def test_evaluate_applies_the_chosen_empty_mask_rule(tmp_path, medseg_cli, rule, expected):
    import csv

    import numpy as np

    (tmp_path / "ref").mkdir()
    (tmp_path / "pred").mkdir()
    empty = np.zeros((4, 4, 4))
    spot = empty.copy()
    spot[1, 1, 1] = 1
    write_labels(tmp_path / "ref" / "a.nii.gz", empty)
    write_labels(tmp_path / "pred" / "a.nii.gz", spot)  # a false positive on an empty reference
    result = medseg_cli(
        "evaluate", tmp_path / "pred", tmp_path / "ref", "--labels", "liver=1", "--one-empty", rule
    )
    assert result.code == 0, result.err
    (row,) = csv.DictReader((tmp_path / "pred" / "evaluation" / "metrics.csv").open())
    assert float(row["dice"]) == 0.0
    if expected is None:
        assert row["hd95"] in ("", "nan")
    else:
        assert float(row["hd95"]) == pytest.approx(expected)


def test_evaluate_reports_a_missing_prediction_and_exits_1(tmp_path, medseg_cli):
    import numpy as np

    (tmp_path / "ref").mkdir()
    (tmp_path / "pred").mkdir()
    labels = np.zeros((4, 4, 4))
    labels[1:3, 1:3, 1:3] = 1
    write_labels(tmp_path / "ref" / "a.nii.gz", labels)
    write_labels(tmp_path / "ref" / "b.nii.gz", labels)
    write_labels(tmp_path / "pred" / "a.nii.gz", labels)
    result = medseg_cli("evaluate", tmp_path / "pred", tmp_path / "ref", "--labels", "liver=1")
    assert result.code == 1
    assert "missing prediction" in result.out


def test_atomic_outputs_get_ordinary_permissions(tmp_path):
    from medseg.files import _UMASK, write_text_atomic

    written = write_text_atomic(tmp_path / "report.json", "{}")
    plain = tmp_path / "plain.json"
    plain.write_text("{}")
    assert written.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == 0o666 & ~_UMASK
