"""A corpus of bad inputs, each run through the command a user would run, each answered
with one line naming the file and the problem, a non-zero exit (1: per-case failure with
the rest done; 2: unusable arguments), no traceback, no partial output and the inputs
untouched."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from medseg.datasets.synthetic import synthesize

SHAPE = (40, 40, 16)


@pytest.fixture(scope="module")
def lits_source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lits_source")
    synthesize("lits", root, cases=3, shape=SHAPE, seed=4)
    return root


@pytest.fixture
def lits(tmp_path, lits_source) -> Path:
    """A private copy of three good LiTS phantom cases."""
    return Path(shutil.copytree(lits_source, tmp_path / "lits"))


def fingerprint(folder: Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def nifti(path: Path, data: np.ndarray, affine=None) -> Path:
    """Write ``data`` (already in memory: a memory map of ``path`` itself would break)."""
    nib.save(
        nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.5, 1.0]) if affine is None else affine), path
    )
    return path


@dataclass
class Outcome:
    """What the user sees and what is left on disk."""

    code: int
    text: str
    output: Path | None


def assert_clean_refusal(outcome: Outcome, code: int, *fragments: str) -> None:
    assert outcome.code == code, outcome.text
    for fragment in fragments:
        assert fragment in outcome.text, outcome.text
    assert "Traceback" not in outcome.text
    if outcome.output is not None and outcome.output.exists():
        leftovers = [p.name for p in outcome.output.iterdir() if p.name.startswith(".")]
        assert not leftovers, leftovers


# ---- predict: one broken case among good ones (exit 1, the others written) ----


def corrupt_empty(path: Path) -> str:
    path.write_bytes(b"")
    return "empty"


def corrupt_truncated_nii(path: Path) -> str:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return "truncated"


def corrupt_truncated_gz(path: Path) -> str:
    compressed = gzip.compress(path.read_bytes())
    path.write_bytes(compressed[: len(compressed) // 2])
    return "truncated"


def corrupt_magic(path: Path) -> str:
    path.write_bytes(b"this is not a NIfTI file at all" * 20)
    return "unreadable"


def corrupt_gzip_garbage(path: Path) -> str:
    path.write_bytes(gzip.compress(np.random.default_rng(0).bytes(5000)))
    return "unreadable"


def corrupt_header_dims(path: Path) -> str:
    image = nib.load(path)
    header = image.header.copy()
    header.set_data_shape((SHAPE[0], SHAPE[1], SHAPE[2] * 3))  # claims more data than the file has
    raw = path.read_bytes()
    path.write_bytes(header.binaryblock + raw[len(header.binaryblock) :])
    return "truncated"


def corrupt_nan(path: Path) -> str:
    data = np.asarray(nib.load(path).dataobj).astype(np.float32)
    data[3, 3, 3] = np.nan
    nifti(path, data)
    return "NaN or infinite voxels"


def corrupt_inf(path: Path) -> str:
    data = np.asarray(nib.load(path).dataobj).astype(np.float32)
    data[5, 5, 5] = np.inf
    nifti(path, data)
    return "NaN or infinite voxels"


def corrupt_constant(path: Path) -> str:
    nifti(path, np.full(SHAPE, -1000, dtype=np.int16))
    return "nothing to segment"


def corrupt_four_d(path: Path) -> str:
    nifti(path, np.zeros((*SHAPE, 2), dtype=np.int16) + np.arange(2, dtype=np.int16))
    return "channel"


def corrupt_two_d(path: Path) -> str:
    nifti(path, np.arange(40 * 40, dtype=np.int16).reshape(40, 40))
    return "2D image"


def corrupt_zero_size(path: Path) -> str:
    header = nib.Nifti1Header()
    header.set_data_shape((40, 40, 0))
    header.set_data_dtype(np.int16)
    path.write_bytes(header.binaryblock + b"\x00" * 4)
    return "zero"


def corrupt_huge(path: Path) -> str:
    header = nib.Nifti1Header()
    header.set_data_shape((30000, 30000, 30000))
    header.set_data_dtype(np.int16)
    header["vox_offset"] = 352
    path.write_bytes(header.binaryblock + b"\x00" * 4 + b"\x00" * 1000)
    return "GB is available"


PREDICT_CORRUPTIONS: dict[str, Callable[[Path], str]] = {
    "empty file": corrupt_empty,
    "truncated nii": corrupt_truncated_nii,
    "truncated nii.gz": corrupt_truncated_gz,
    "wrong magic": corrupt_magic,
    "gzip of garbage": corrupt_gzip_garbage,
    "header dims beyond the data": corrupt_header_dims,
    "NaN voxels": corrupt_nan,
    "Inf voxels": corrupt_inf,
    "constant image": corrupt_constant,
    "4D where 3D is expected": corrupt_four_d,
    "2D where 3D is expected": corrupt_two_d,
    "zero-size dimension": corrupt_zero_size,
    "dimension that would exhaust memory": corrupt_huge,
}
GZIPPED = {"truncated nii.gz", "gzip of garbage", "wrong magic"}


@pytest.mark.parametrize("kind", sorted(PREDICT_CORRUPTIONS))
def test_predict_reports_the_bad_case_and_writes_the_others(
    kind, tmp_path, lits, ct_model_dir, medseg_cli
):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for index in range(3):
        shutil.copy(lits / f"volume-{index}.nii", inputs / f"volume-{index}.nii")
    bad = inputs / "volume-1.nii"
    if kind in GZIPPED:
        bad = bad.rename(inputs / "volume-1.nii.gz")
    expected = PREDICT_CORRUPTIONS[kind](bad)
    before = fingerprint(inputs)
    result = medseg_cli("predict", ct_model_dir, inputs, "--output", tmp_path / "out")
    outcome = Outcome(result.code, result.out + result.err, tmp_path / "out")
    assert_clean_refusal(outcome, 1, bad.name, expected)
    failure_lines = [line for line in result.out.splitlines() if line.startswith("failed")]
    assert len(failure_lines) == 1
    assert sorted(p.name for p in (tmp_path / "out").glob("volume-*")) == [
        "volume-0.nii.gz",
        "volume-2.nii.gz",
    ]
    report = json.loads((tmp_path / "out" / "predict_report.json").read_text())
    assert {c["case"]: c["status"] for c in report["cases"]}["volume-1"] == "failed"
    assert fingerprint(inputs) == before


# ---- check: every broken case found at once, exit 1 ----


def label_outside_set(root: Path) -> tuple[Path, str]:
    path = root / "segmentation-1.nii"
    data = np.asarray(nib.load(path).dataobj).copy()
    data[0, 0, 0] = 7
    nifti(path, data, nib.load(path).affine)
    return path, "7"


def float_labels(root: Path) -> tuple[Path, str]:
    path = root / "segmentation-1.nii"
    data = np.asarray(nib.load(path).dataobj).astype(np.float32)
    data[0, 0, 0] = 0.5
    nifti(path, data, nib.load(path).affine)
    return path, "0.5"


def shape_mismatch(root: Path) -> tuple[Path, str]:
    path = root / "segmentation-1.nii"
    nifti(path, np.zeros((SHAPE[0], SHAPE[1], SHAPE[2] - 2), np.uint8), nib.load(path).affine)
    return path, "shape"


def affine_mismatch(root: Path) -> tuple[Path, str]:
    path = root / "segmentation-1.nii"
    affine = nib.load(path).affine.copy()
    affine[0, 3] += 5.0
    nifti(path, np.asarray(nib.load(path).dataobj).copy(), affine)
    return path, "affine"


def missing_label(root: Path) -> tuple[Path, str]:
    path = root / "segmentation-1.nii"
    path.unlink()
    return path, "missing"


CHECK_CORRUPTIONS = {
    "label value outside the set": label_outside_set,
    "float labels": float_labels,
    "image/label shape mismatch": shape_mismatch,
    "image/label affine mismatch": affine_mismatch,
    "missing label file": missing_label,
}


@pytest.mark.parametrize("kind", sorted(CHECK_CORRUPTIONS))
def test_check_names_the_file_and_exits_1(kind, lits, medseg_cli):
    path, fragment = CHECK_CORRUPTIONS[kind](lits)
    result = medseg_cli("check", "lits", lits)
    outcome = Outcome(result.code, result.out + result.err, None)
    assert_clean_refusal(outcome, 1, path.name, fragment, "1 with problems")


@pytest.mark.parametrize("kind", ["label value outside the set", "image/label shape mismatch"])
def test_training_refuses_a_broken_dataset_before_starting(kind, tmp_path, lits, medseg_cli):
    path, _ = CHECK_CORRUPTIONS[kind](lits)
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": {"layout": "lits", "root": str(lits), "folds": 2},
                "network": {"name": "unetpp", "preset": "tiny"},
                "output": str(tmp_path / "run"),
                "tracking": {"enabled": False},
            }
        )
    )
    before = fingerprint(lits)
    result = medseg_cli("train", config)
    assert_clean_refusal(Outcome(result.code, result.err, None), 2, path.name)
    # A job log shows when each step starts (INFO lines); the refusal itself is one line.
    refusal = [line for line in result.err.strip().splitlines() if " INFO " not in line]
    assert len(refusal) == 1, result.err
    assert not (tmp_path / "run" / "checkpoint_last.pt").exists()
    assert fingerprint(lits) == before


def test_missing_modality_and_duplicate_ids_are_found(tmp_path, brats_phantoms, medseg_cli):
    root = Path(shutil.copytree(brats_phantoms["test"], tmp_path / "brats"))
    missing = root / "BraTS2021_00001" / "BraTS2021_00001_t2.nii.gz"
    missing.unlink()
    result = medseg_cli("check", "brats", root)
    assert_clean_refusal(Outcome(result.code, result.out, None), 1, missing.name, "missing")

    folder = tmp_path / "folder"
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    image = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE)
    for name in ("a.nii.gz", "a.nii"):
        nifti(folder / "images" / name, image)
        nifti(folder / "labels" / name, (image > 100).astype(np.uint8))
    result = medseg_cli("check", "folder", folder)
    assert_clean_refusal(Outcome(result.code, result.out, None), 1, "duplicate")


def test_dataset_json_path_escaping_the_root_is_refused(tmp_path, medseg_cli):
    synthesize("msd", tmp_path / "msd", cases=2, shape=(24, 24, 16), seed=0)
    dataset = json.loads((tmp_path / "msd" / "dataset.json").read_text())
    dataset["training"][0]["image"] = "../../../etc/passwd"
    (tmp_path / "msd" / "dataset.json").write_text(json.dumps(dataset))
    result = medseg_cli("check", "msd", tmp_path / "msd")
    assert_clean_refusal(Outcome(result.code, result.out + result.err, None), 1, "passwd")


# ---- arguments and outputs (exit 2) ----


def test_output_folder_that_cannot_be_written_is_refused(tmp_path, lits, ct_model_dir, medseg_cli):
    unwritable = Path("/proc/medseg-output")  # a read-only file system, even for root
    result = medseg_cli("predict", ct_model_dir, lits / "volume-0.nii", "--output", unwritable)
    assert_clean_refusal(Outcome(result.code, result.err, None), 2, "medseg-output", "cannot write")


def test_output_folder_equal_to_the_input_folder_is_refused(lits, ct_model_dir, medseg_cli):
    before = fingerprint(lits)
    result = medseg_cli("predict", ct_model_dir, lits / "volume-0.nii", "--output", lits)
    assert_clean_refusal(Outcome(result.code, result.err, None), 2, "is an input folder")
    assert fingerprint(lits) == before


def test_full_disk_fails_the_case_and_leaves_no_partial_file(
    tmp_path, lits, ct_model_dir, medseg_cli, monkeypatch
):
    import errno

    import medseg.pipelines.prediction.predict as predict_module

    def full_disk(reference, labels, target, **options):
        partial = target.with_name(f".{target.name}.partial")
        partial.write_bytes(b"\x00" * 10)
        partial.unlink()
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(predict_module, "write_label_like", full_disk)
    result = medseg_cli(
        "predict", ct_model_dir, lits / "volume-0.nii", "--output", tmp_path / "out"
    )
    assert_clean_refusal(
        Outcome(result.code, result.out, tmp_path / "out"), 1, "No space left on device"
    )
    assert not list((tmp_path / "out").glob("volume-*"))


def test_symlink_loop_is_a_clear_error(tmp_path, ct_model_dir, medseg_cli):
    loop = tmp_path / "loop"
    loop.mkdir()
    (loop / "a").symlink_to(loop / "b")
    (loop / "b").symlink_to(loop / "a")
    result = medseg_cli("predict", ct_model_dir, loop, "--output", tmp_path / "out")
    assert_clean_refusal(Outcome(result.code, result.err, None), 2, "loop", "no image files")


def test_spaces_and_non_utf8_bytes_in_paths_work(tmp_path, lits, ct_model_dir, medseg_cli):
    odd = Path(bytes(tmp_path).decode() + "/in put \udcff")
    odd.mkdir()
    shutil.copy(lits / "volume-0.nii", odd / "case one \udcfe.nii")
    result = medseg_cli("predict", ct_model_dir, odd, "--output", tmp_path / "out put")
    assert result.code == 0, result.err
    assert (tmp_path / "out put" / "case one \udcfe.nii.gz").is_file()


def test_crafted_pickle_checkpoint_is_refused_unexecuted(tmp_path, lits, medseg_cli, ct_model_dir):
    import pickle

    run = tmp_path / "run"
    shutil.copytree(ct_model_dir, run / "model")
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (run / "checkpoint_best.pt").write_bytes(pickle.dumps({"network": Exploit()}))
    result = medseg_cli(
        "predict", run / "checkpoint_best.pt", lits / "volume-0.nii", "--output", tmp_path / "out"
    )
    assert_clean_refusal(Outcome(result.code, result.err, None), 2, "checkpoint_best.pt", "refused")
    assert not marker.exists()


def test_malformed_config_is_one_line(tmp_path, medseg_cli):
    config = tmp_path / "bad.yaml"
    config.write_text("data: [unclosed\n")
    result = medseg_cli("train", config)
    assert_clean_refusal(Outcome(result.code, result.err, None), 2, "bad.yaml", "not valid YAML")


def test_debug_shows_the_traceback_others_do_not(tmp_path):
    import subprocess
    import sys

    medseg = str(Path(sys.executable).with_name("medseg"))
    command = [medseg, "train", str(tmp_path / "absent.yaml")]
    quiet = subprocess.run(command, capture_output=True, text=True, encoding="utf-8")
    debug = subprocess.run(
        [medseg, "--debug", *command[1:]], capture_output=True, text=True, encoding="utf-8"
    )
    assert quiet.returncode == 2
    assert "Traceback" not in quiet.stderr and len(quiet.stderr.strip().splitlines()) == 1
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_evaluate_reports_a_truncated_prediction(tmp_path, lits, medseg_cli):
    predictions = tmp_path / "pred"
    predictions.mkdir()
    for index in range(3):
        shutil.copy(lits / f"segmentation-{index}.nii", predictions / f"volume-{index}.nii")
    corrupt_truncated_nii(predictions / "volume-2.nii")
    result = medseg_cli("evaluate", predictions, lits, "--output", tmp_path / "eval")
    assert_clean_refusal(Outcome(result.code, result.out, tmp_path / "eval"), 1, "volume-2.nii")
    assert (tmp_path / "eval" / "metrics.csv").is_file()


def test_dicom_series_with_a_missing_slice_is_refused(tmp_path, ct_model_dir, medseg_cli):
    import SimpleITK as sitk

    series = tmp_path / "series"
    series.mkdir()
    volume = sitk.GetImageFromArray(np.full((8, 40, 40), 40, dtype=np.int16))
    volume.SetSpacing((0.8, 0.8, 2.0))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(8):
        if z == 4:
            continue  # the missing slice
        plane = volume[:, :, z]
        plane.SetMetaData("0020|0032", f"0\\0\\{2.0 * z}")
        plane.SetMetaData("0020|000e", "1.2.3.4")
        plane.SetMetaData("0008|0060", "CT")
        writer.SetFileName(str(series / f"slice{z:02d}.dcm"))
        writer.Execute(plane)
    result = medseg_cli("predict", ct_model_dir, series, "--output", tmp_path / "out")
    assert_clean_refusal(
        Outcome(result.code, result.out, tmp_path / "out"), 1, "slice gap", "missing slices"
    )
