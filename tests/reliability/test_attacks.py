"""Faults found after issue 23's list, by attacking its fixes: a decompression bomb, two
training runs into one folder, a pruning report written into the dataset."""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from medseg.datasets.synthetic import synthesize
from tests.reliability.test_arguments import one_line_refusal
from tests.reliability.test_bad_inputs import fingerprint
from tests.reliability.test_nothing_lost import hold_lock


def test_a_decompression_bomb_is_refused_without_inflating_it(tmp_path):
    from medseg.datasets.headers import UnusableImageError, inspect_image

    image = nib.Nifti1Image(np.ones((8, 8, 8), np.int16), np.eye(4))
    header = image.header.copy()
    header.set_data_dtype(np.int16)
    body = header.binaryblock + b"\x00" * 4 + np.ones(512, np.int16).tobytes()
    bomb = tmp_path / "bomb.nii.gz"
    with gzip.open(bomb, "wb", compresslevel=1) as stream:
        stream.write(body)
        zeros = bytes(1 << 24)
        for _ in range(16):  # 256 MiB of trailing zeros in a file of about 1 MiB
            stream.write(zeros)
    started = time.perf_counter()
    with pytest.raises(UnusableImageError, match="expands past"):
        inspect_image(bomb)
    assert time.perf_counter() - started < 2


@pytest.fixture
def lits(tmp_path) -> Path:
    synthesize("lits", tmp_path / "lits", cases=2, shape=(24, 24, 16), seed=2)
    return tmp_path / "lits"


def train_config(tmp_path: Path, root: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "data": {"layout": "lits", "root": str(root), "folds": 2},
                "network": {"name": "unetpp", "preset": "tiny"},
                "output": str(tmp_path / "run"),
                "tracking": {"enabled": False},
            }
        )
    )
    return path


def test_a_second_training_run_into_a_busy_folder_is_refused(tmp_path, lits, medseg_cli):
    from medseg.pipelines.case_locks import lock_path

    run = tmp_path / "run"
    run.mkdir()
    holder = hold_lock(lock_path(run / "training"))
    try:
        result = medseg_cli("-q", "train", train_config(tmp_path, lits))
        one_line_refusal(result, 2, str(run), "another medseg train")
    finally:
        holder.kill()
        holder.wait()
    # The holder died: its lock file no longer stops a run (which then fails on the
    # empty dataset, past the lock).
    result = medseg_cli("-q", "train", train_config(tmp_path, tmp_path / "empty"))
    assert result.code == 2 and "another medseg train" not in result.err, result.err
    assert not lock_path(run / "training").exists()


def test_pruning_output_inside_the_data_is_refused(tmp_path, lits, ct_model_dir, medseg_cli):
    before = fingerprint(lits)
    result = medseg_cli("prune", ct_model_dir, lits, "--output", lits / "pruned")
    one_line_refusal(result, 2, "pruned", "input folder")
    assert fingerprint(lits) == before and not (lits / "pruned").exists()


def test_a_file_where_the_run_folder_goes_is_one_line(tmp_path, lits, medseg_cli):
    (tmp_path / "run").write_text("a user's file")
    result = medseg_cli("-q", "train", train_config(tmp_path, lits))
    one_line_refusal(result, 2, "run", "cannot create the run folder")
    assert (tmp_path / "run").read_text() == "a user's file"


def test_evaluate_refuses_a_volume_beyond_memory_before_reading_it(
    tmp_path, lits, medseg_cli, monkeypatch
):
    from medseg.pipelines import resources

    predictions = tmp_path / "pred"
    predictions.mkdir()
    for index in range(2):
        (predictions / f"volume-{index}.nii").write_bytes(
            (lits / f"segmentation-{index}.nii").read_bytes()
        )
    # 24x24x16 voxels need about 0.2 MB to score.
    monkeypatch.setattr(resources, "available_memory", lambda: 100_000)
    result = medseg_cli("evaluate", predictions, lits, "-o", tmp_path / "eval", "--workers", "1")
    assert result.code == 1, result.out + result.err
    assert "volume-0.nii" in result.out and "to score" in result.out
