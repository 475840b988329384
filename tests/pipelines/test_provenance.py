"""Provenance: the source commit of a checkout, and a dataset fingerprint that follows the
files' names and sizes, not where the dataset lies or the order of the datalist."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from medseg.errors import ConfigError
from medseg.pipelines import provenance
from medseg.pipelines.provenance import dataset_fingerprint, git_commit

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def git(folder: Path, *arguments: str) -> str:
    command = ["git", "-C", str(folder), "-c", "user.name=t", "-c", "user.email=t@t", *arguments]
    return subprocess.run(
        command, capture_output=True, text=True, encoding="utf-8", check=True
    ).stdout.strip()


@needs_git
def test_git_commit_is_the_checked_out_commit_of_tracked_files_only(tmp_path) -> None:
    git(tmp_path, "init", "-q")
    (tmp_path / "tracked").mkdir()
    (tmp_path / "tracked" / "code.py").write_text("x = 1\n")
    git(tmp_path, "add", "tracked")
    git(tmp_path, "commit", "-q", "-m", "first")
    (tmp_path / "ignored").mkdir()  # like a virtual environment inside someone's checkout
    (tmp_path / "ignored" / "module.py").write_text("y = 2\n")

    commit = git_commit(tmp_path / "tracked")
    assert commit == git(tmp_path, "rev-parse", "HEAD")
    assert re.fullmatch(r"[0-9a-f]{40}", commit)
    assert git_commit(tmp_path / "tracked" / "code.py") == commit
    assert git_commit(tmp_path / "ignored") is None


@needs_git
def test_git_commit_defaults_to_medseg_own_source_tree() -> None:
    source = Path(provenance.__file__).parent
    head = subprocess.run(
        ["git", "-C", str(source), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        encoding="utf-8",
    )
    if head.returncode:
        pytest.skip("medseg is not running from a git checkout")
    assert git_commit() == head.stdout.strip()


def test_git_commit_outside_a_checkout_is_none(tmp_path) -> None:
    assert git_commit(tmp_path) is None


def make_dataset(root: Path) -> list[dict]:
    datalist = []
    for index, case_id in enumerate(["case_b", "case_a"]):
        folder = root / case_id
        folder.mkdir(parents=True)
        images = []
        for channel in ("t1", "t2"):
            (folder / f"{channel}.nii.gz").write_bytes(b"x" * (10 + index))
            images.append(str(folder / f"{channel}.nii.gz"))
        (folder / "seg.nii.gz").write_bytes(b"y" * 5)
        datalist.append({"id": case_id, "image": images, "label": str(folder / "seg.nii.gz")})
    return datalist


def test_fingerprint_follows_names_and_sizes_not_location_or_order(tmp_path) -> None:
    datalist = make_dataset(tmp_path / "here")
    fingerprint = dataset_fingerprint(datalist)
    assert re.fullmatch(r"[0-9a-f]{64}", fingerprint)
    assert dataset_fingerprint(list(reversed(datalist))) == fingerprint
    assert dataset_fingerprint(make_dataset(tmp_path / "elsewhere" / "copy")) == fingerprint

    Path(datalist[0]["label"]).write_bytes(b"y" * 6)
    assert dataset_fingerprint(datalist) != fingerprint
    unlabelled = [case | {"label": None} for case in make_dataset(tmp_path / "third")]
    assert dataset_fingerprint(unlabelled) != fingerprint
    assert dataset_fingerprint(unlabelled[:1]) != dataset_fingerprint(unlabelled)


def test_fingerprint_of_a_missing_file_names_it(tmp_path) -> None:
    datalist = make_dataset(tmp_path)
    Path(datalist[1]["image"][0]).unlink()
    with pytest.raises(ConfigError, match=r"case_a/t1\.nii\.gz: missing \(case case_a\)"):
        dataset_fingerprint(datalist)
