"""Issue 23: commands that would write over a user's files, or that took unusable
arguments as per-case failures (exit 1) instead of refusing them (exit 2)."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from medseg.datasets.synthetic import synthesize
from tests.reliability.test_bad_inputs import fingerprint

SHAPE = (24, 24, 16)


def one_line_refusal(result, code: int, *fragments: str) -> None:
    assert result.code == code, result.out + result.err
    assert len(result.err.strip().splitlines()) == 1, result.err
    assert "Traceback" not in result.err
    for fragment in fragments:
        assert fragment in result.err, result.err


@pytest.fixture
def lits(tmp_path) -> Path:
    synthesize("lits", tmp_path / "lits", cases=2, shape=SHAPE, seed=2)
    return tmp_path / "lits"


# ---- 4: synth never replaces a dataset ----


def test_synth_into_a_non_empty_folder_is_refused_without_overwrite(lits, medseg_cli):
    before = fingerprint(lits)
    result = medseg_cli("synth", "lits", lits, "--cases", "2", "--shape", "24", "24", "16")
    one_line_refusal(result, 2, str(lits), "not empty", "--overwrite")
    assert fingerprint(lits) == before
    result = medseg_cli(
        "synth", "lits", lits, "--cases", "1", "--shape", "24", "24", "16", "--overwrite"
    )
    assert result.code == 0, result.err


# ---- 5: train and evaluate keep out of the data ----


@pytest.mark.parametrize("where", ["root", "inside", "above"])
def test_training_output_in_or_above_the_data_root_is_refused(where, tmp_path, lits, medseg_cli):
    output = {"root": lits, "inside": lits / "run", "above": tmp_path}[where]
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": {"layout": "lits", "root": str(lits), "folds": 2},
                "network": {"name": "unetpp", "preset": "tiny"},
                "output": str(output),
                "tracking": {"enabled": False},
            }
        )
    )
    before = fingerprint(lits)
    config_before = config.read_bytes()
    result = medseg_cli("-q", "train", config)
    one_line_refusal(result, 2, "output")
    assert fingerprint(lits) == before and config.read_bytes() == config_before


@pytest.fixture
def predictions(tmp_path, lits) -> Path:
    folder = tmp_path / "pred"
    folder.mkdir()
    for index in range(2):
        shutil.copy(lits / f"segmentation-{index}.nii", folder / f"volume-{index}.nii")
    return folder


@pytest.mark.parametrize("target", ["prediction folder", "reference folder", "inside references"])
def test_evaluate_output_may_not_be_the_prediction_or_reference_folder(
    target, lits, predictions, medseg_cli
):
    output = {
        "prediction folder": predictions,
        "reference folder": lits,
        "inside references": lits / "report",
    }[target]
    before = fingerprint(lits), fingerprint(predictions)
    result = medseg_cli("evaluate", predictions, lits, "-o", output, "--workers", "1")
    one_line_refusal(result, 2, str(output))
    assert (fingerprint(lits), fingerprint(predictions)) == before


# ---- 15: evaluate names label values outside the set ----


@pytest.mark.parametrize("value", [9, -3])
def test_evaluate_reports_prediction_values_outside_the_label_set(
    value, tmp_path, lits, predictions, medseg_cli
):
    path = predictions / "volume-1.nii"
    image = nib.load(path)
    data = np.asarray(image.dataobj).astype(np.int16)
    data[0, 0, 0] = value
    nib.save(nib.Nifti1Image(data, image.affine), path)
    result = medseg_cli("evaluate", predictions, lits, "-o", tmp_path / "eval", "--workers", "1")
    assert result.code == 1, result.out + result.err
    assert "volume-1.nii" in result.out and f"label values {value}" in result.out


# ---- 19: unusable arguments exit 2 ----


def test_unknown_device_is_an_unusable_argument(lits, ct_model_dir, tmp_path, medseg_cli):
    result = medseg_cli(
        "predict", ct_model_dir, lits / "volume-0.nii", "-o", tmp_path / "out", "--device", "tpu"
    )
    one_line_refusal(result, 2, "tpu")


def test_synth_shape_beyond_memory_is_refused_before_allocating(tmp_path, medseg_cli):
    result = medseg_cli(
        "synth", "lits", tmp_path / "big", "--cases", "1", "--shape", "30000", "30000", "30000"
    )
    one_line_refusal(result, 2, "30000", "GB")
    assert not (tmp_path / "big").exists()


@pytest.mark.parametrize("command", ["synth", "export"])
def test_synth_and_export_onto_an_existing_file_are_refused(
    command, tmp_path, ct_model_dir, medseg_cli
):
    existing = tmp_path / "existing"
    existing.write_text("a user's file")
    if command == "synth":
        result = medseg_cli("synth", "lits", existing, "--cases", "1", "--shape", "16", "16", "8")
    else:
        result = medseg_cli("export", ct_model_dir, "--output", existing)
    one_line_refusal(result, 2, "existing", "not a folder")
    assert existing.read_text() == "a user's file"
