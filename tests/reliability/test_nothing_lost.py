"""Issue 23, "data destroyed or silently lost": every way an adversarial pass found to
overwrite a user's files or drop a case without a word, each refused or reported."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.datasets.synthetic import synthesize
from tests.reliability.test_bad_inputs import fingerprint

SHAPE = (24, 24, 16)


@pytest.fixture(scope="module")
def msd_model(tmp_path_factory) -> Path:
    from medseg.datasets.base import LabelScheme
    from tests.conftest import write_untrained_model

    return write_untrained_model(
        tmp_path_factory.mktemp("models") / "msd-tiny",
        layout="msd",
        modality="mri",
        channels=["FLAIR", "T1w", "t1gd", "T2w"],
        labels=LabelScheme.classes({"background": 0, "edema": 1, "non": 2, "enhancing": 3}),
        patch_size=[16, 16, 16],
        features=[2, 4, 8],
    )


@pytest.fixture(scope="module")
def small_ct_model(tmp_path_factory) -> Path:
    from medseg.datasets.lits import LABELS
    from tests.conftest import write_untrained_model

    return write_untrained_model(
        tmp_path_factory.mktemp("models") / "ct-tiny",
        layout="lits",
        modality="ct",
        channels=["ct"],
        labels=LABELS,
        patch_size=[16, 16, 16],
        features=[2, 4, 8],
        intensity={"window_low": -200.0, "window_high": 250.0, "mean": 60.0, "std": 40.0},
    )


@pytest.fixture
def msd_root(tmp_path) -> Path:
    synthesize("msd", tmp_path / "msd", cases=2, shape=SHAPE, seed=0)
    return tmp_path / "msd"


@pytest.fixture
def ct_inputs(tmp_path) -> Path:
    synthesize("lits", tmp_path / "lits", cases=2, shape=SHAPE, seed=1)
    folder = tmp_path / "in"
    folder.mkdir()
    for index in range(2):
        shutil.copy(tmp_path / "lits" / f"volume-{index}.nii", folder / f"volume-{index}.nii")
    return folder


# ---- 1: an output inside an input or a dataset root ----


@pytest.mark.parametrize("inside", ["labelsTr", "imagesTr", ".", "labelsTr/deeper"])
def test_output_inside_a_dataset_root_given_as_input_is_refused(
    inside, msd_root, msd_model, medseg_cli
):
    before = fingerprint(msd_root)
    output = msd_root / inside
    result = medseg_cli("predict", msd_model, msd_root, "-o", output, "--overwrite")
    assert result.code == 2, result.out + result.err
    assert "input folder" in result.err and len(result.err.strip().splitlines()) == 1
    assert fingerprint(msd_root) == before


def test_output_beside_an_input_inside_a_dataset_root_is_refused(msd_root, msd_model, medseg_cli):
    before = fingerprint(msd_root)
    result = medseg_cli(
        "predict", msd_model, msd_root / "imagesTr", "-o", msd_root / "labelsTr", "--overwrite"
    )
    assert result.code == 2, result.out + result.err
    assert "labelsTr" in result.err
    assert fingerprint(msd_root) == before


def test_output_through_a_symlink_into_the_input_is_refused(
    tmp_path, ct_inputs, small_ct_model, medseg_cli
):
    (tmp_path / "link").symlink_to(ct_inputs)
    before = fingerprint(ct_inputs)
    result = medseg_cli("predict", small_ct_model, ct_inputs, "-o", tmp_path / "link" / "out")
    assert result.code == 2 and "input folder" in result.err, result.err
    result = medseg_cli(
        "predict", small_ct_model, ct_inputs / "volume-0.nii", "-o", tmp_path / "link"
    )
    assert result.code == 2 and "is an input folder" in result.err, result.err
    assert fingerprint(ct_inputs) == before and not (ct_inputs / "out").exists()


def test_a_new_folder_beside_input_files_is_a_valid_output(
    tmp_path, ct_inputs, small_ct_model, medseg_cli
):
    before = fingerprint(ct_inputs)
    result = medseg_cli(
        "predict", small_ct_model, str(ct_inputs / "*.nii"), "-o", ct_inputs / "predictions"
    )
    assert result.code == 0, result.out + result.err
    assert (ct_inputs / "predictions" / "volume-0.nii.gz").is_file()
    assert {k: v for k, v in fingerprint(ct_inputs).items() if "predictions" not in k} == before


# ---- 2: cases a layout rejects are named failures ----


def test_brats_cases_missing_a_modality_are_failures_not_omissions(
    tmp_path, brats_model_dir, medseg_cli
):
    root = tmp_path / "brats"
    synthesize("brats", root, cases=2, shape=SHAPE, seed=0)
    missing = root / "BraTS2021_00001" / "BraTS2021_00001_t1ce.nii.gz"
    missing.unlink()
    result = medseg_cli("predict", brats_model_dir, root, "-o", tmp_path / "out")
    assert result.code == 1, result.out + result.err
    assert "BraTS2021_00001_t1ce.nii.gz" in result.out
    report = json.loads((tmp_path / "out" / "predict_report.json").read_text())
    statuses = {case["case"]: case["status"] for case in report["cases"]}
    assert statuses == {"BraTS2021_00000": "done", "BraTS2021_00001": "failed"}

    # The case folder alone: a named failure, not "no image files found".
    result = medseg_cli("predict", brats_model_dir, missing.parent, "-o", tmp_path / "out2")
    assert result.code == 1, result.out + result.err
    assert "t1ce" in result.out and "no image files" not in result.out + result.err


def test_dataset_json_entry_leaving_the_root_is_a_failure(msd_root, msd_model, medseg_cli):
    description = json.loads((msd_root / "dataset.json").read_text())
    description["test"].append("../outside/BRATS_009.nii.gz")
    (msd_root / "dataset.json").write_text(json.dumps(description))
    output = msd_root.parent / "out"
    result = medseg_cli("predict", msd_model, msd_root, "-o", output)
    assert result.code == 1, result.out + result.err
    assert "BRATS_009" in result.out
    report = json.loads((output / "predict_report.json").read_text())
    assert {c["case"]: c["status"] for c in report["cases"]}["BRATS_009"] == "failed"


# ---- 3: stale temporaries are matched literally ----


def test_stale_temporary_cleanup_matches_names_literally(tmp_path):
    from medseg.files import atomic_path, remove_stale_temporaries

    target = tmp_path / "*.nii.gz"
    unrelated = [tmp_path / ".profile", tmp_path / ".a.nii.gz.keep.nii.gz", tmp_path / ".x.y"]
    for path in unrelated:
        path.write_text("mine")
    stale = tmp_path / ".*.nii.gz.k3x_9q2z.nii.gz"  # as atomic_path names it, then killed
    stale.write_text("left by a killed run")
    with atomic_path(tmp_path / "case.nii.gz") as other_temporary:
        other_temporary.write_text("a concurrent writer's")
        assert remove_stale_temporaries(target) == [stale]
        assert other_temporary.exists()
    assert all(path.read_text() == "mine" for path in unrelated)


def test_predict_of_an_input_named_like_a_glob_keeps_other_dotfiles(
    tmp_path, ct_inputs, small_ct_model, medseg_cli
):
    starred = tmp_path / "star"
    starred.mkdir()
    shutil.copy(ct_inputs / "volume-0.nii", starred / "*.nii")
    output = tmp_path / "out"
    output.mkdir()
    keep = output / ".volume-0.nii.gz.keepme.nii.gz"
    keep.write_text("not medseg's")
    result = medseg_cli("predict", small_ct_model, starred / "*.nii", "-o", output)
    assert result.code == 0, result.out + result.err
    assert keep.read_text() == "not medseg's"


def test_a_killed_runs_report_temporary_is_removed(tmp_path, ct_inputs, small_ct_model, medseg_cli):
    output = tmp_path / "out"
    output.mkdir()
    stale = output / ".predict_report.json.x1y2z3_q.json"  # as atomic_path names it
    stale.write_text('{"cases": [')
    result = medseg_cli("predict", small_ct_model, ct_inputs, "-o", output)
    assert result.code == 0, result.out + result.err
    assert not [p.name for p in output.iterdir() if p.name.startswith(".")]


# ---- 6: a file under an output's name is done only when complete and on the grid ----


@pytest.mark.parametrize("kind", ["empty", "truncated", "other grid", "fifo"])
def test_rerun_redoes_outputs_that_are_not_complete(
    kind, tmp_path, ct_inputs, small_ct_model, medseg_cli
):
    output = tmp_path / "out"
    result = medseg_cli("predict", small_ct_model, ct_inputs, "-o", output)
    assert result.code == 0, result.err
    target = output / "volume-1.nii.gz"
    good = nib.load(target).get_fdata().copy()
    if kind == "empty":
        target.write_bytes(b"")
    elif kind == "truncated":
        target.write_bytes(target.read_bytes()[:200])
    elif kind == "fifo":
        target.unlink()
        os.mkfifo(target)
    else:
        nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.uint8), np.eye(4)), target)
    result = medseg_cli("predict", small_ct_model, ct_inputs, "-o", output)
    assert result.code == 0, result.out + result.err
    assert "1 segmented, 1 already done" in result.out
    assert np.array_equal(nib.load(target).get_fdata(), good)


def test_rerun_redoes_a_case_whose_probabilities_are_missing(
    tmp_path, ct_inputs, small_ct_model, medseg_cli
):
    output = tmp_path / "out"
    arguments = ("predict", small_ct_model, ct_inputs, "-o", output, "--save-probabilities")
    assert medseg_cli(*arguments).code == 0
    (output / "volume-1_probabilities.npz").unlink()  # killed between the two writes
    (output / "volume-0_probabilities.npz").write_bytes(b"PK\x03\x04 cut short")
    result = medseg_cli(*arguments)
    assert result.code == 0, result.out + result.err
    assert "2 segmented, 0 already done" in result.out
    for index in range(2):
        with np.load(output / f"volume-{index}_probabilities.npz") as saved:
            assert saved["probabilities"].shape[1:] == SHAPE


# ---- 22: concurrent runs share the cases; a dead owner's case is taken over ----


def hold_lock(path: Path) -> subprocess.Popen:
    """Another process holding ``path``'s lock (as a live medseg run does) until it is
    killed or its standard input closes; returns once the lock is held."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT);"
            "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); sys.stdin.read()",
            str(path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_case_locked_by_a_live_run_is_skipped_and_a_dead_runs_lock_is_taken_over(
    tmp_path, ct_inputs, small_ct_model, medseg_cli
):
    from medseg.pipelines.case_locks import lock_path

    output = tmp_path / "out"
    output.mkdir()
    holder = hold_lock(lock_path(output / "volume-0.nii.gz"))
    try:
        result = medseg_cli("predict", small_ct_model, ct_inputs, "-o", output)
        assert result.code == 0, result.out + result.err
        assert not (output / "volume-0.nii.gz").exists()
        assert (output / "volume-1.nii.gz").is_file()
        report = json.loads((output / "predict_report.json").read_text())
        busy = {c["case"]: c for c in report["cases"]}["volume-0"]
        assert busy["status"] == "skipped" and "another medseg predict run" in busy["error"]
    finally:
        holder.kill()
        holder.wait()
    # The owner died holding the lock: the next run takes the case over and cleans up.
    result = medseg_cli("predict", small_ct_model, ct_inputs, "-o", output)
    assert result.code == 0, result.out + result.err
    assert "1 segmented, 1 already done" in result.out
    assert sorted(p.name for p in output.iterdir()) == [
        "labels.ctbl",
        "labels.itksnap.txt",
        "predict_report.json",
        "statistics.csv",
        "volume-0.nii.gz",
        "volume-1.nii.gz",
    ]


def test_a_case_abandoned_by_the_other_run_is_reported_failed(
    tmp_path, ct_inputs, small_ct_model, medseg_cli, monkeypatch
):
    """The other run holds volume-0 when this one starts, then dies without writing it:
    this run's report says so (failed, exit 1) instead of "another run is segmenting"."""
    from medseg.pipelines.case_locks import lock_path
    from medseg.pipelines.prediction import segmenter

    output = tmp_path / "out"
    output.mkdir()
    holder = hold_lock(lock_path(output / "volume-0.nii.gz"))
    infer = segmenter.Segmenter.infer

    def infer_then_let_the_holder_die(self, *args, **kwargs):
        holder.stdin.close()  # the holder exits, its lock with it
        holder.wait()
        return infer(self, *args, **kwargs)

    monkeypatch.setattr(segmenter.Segmenter, "infer", infer_then_let_the_holder_die)
    try:
        result = medseg_cli("predict", small_ct_model, ct_inputs, "-o", output)
    finally:
        holder.kill()
        holder.wait()
    assert result.code == 1, result.out + result.err
    report = json.loads((output / "predict_report.json").read_text())
    abandoned = {c["case"]: c for c in report["cases"]}["volume-0"]
    assert abandoned["status"] == "failed" and "did not finish it" in abandoned["error"]
    assert "volume-0.nii" in abandoned["error"]


def test_a_file_system_without_locks_still_segments_every_case(
    tmp_path, ct_inputs, small_ct_model, medseg_cli, monkeypatch
):
    import errno

    from medseg.pipelines import case_locks

    def no_locks(descriptor, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(case_locks.fcntl, "flock", no_locks)
    result = medseg_cli("predict", small_ct_model, ct_inputs, "-o", tmp_path / "out")
    assert result.code == 0, result.out + result.err
    assert "2 segmented" in result.out
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_two_concurrent_runs_segment_each_case_once(tmp_path, ct_inputs, small_ct_model):
    output = tmp_path / "out"
    for index in range(2, 6):
        shutil.copy(ct_inputs / "volume-0.nii", ct_inputs / f"volume-{index}.nii")
    medseg = str(Path(sys.executable).with_name("medseg"))
    command = [medseg, "-q", "predict", str(small_ct_model), str(ct_inputs), "-o", str(output)]
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    runs = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment)
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    segmented = [int(out.decode().split(" segmented")[0].split()[-1]) for out, _ in outputs]
    assert sum(segmented) == 6, outputs
    assert len(list(output.glob("volume-*.nii.gz"))) == 6
