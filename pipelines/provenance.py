"""Where a model came from: the medseg source commit and a fingerprint of its data.

Training records both in the model directory's ``provenance`` (keys ``git_commit`` and
``dataset_fingerprint``); ``medseg info`` shows them. Both are cheap: one ``git`` call,
and file sizes rather than file contents.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from medseg.errors import ConfigError

_SOURCE = Path(__file__).resolve().parent


def git_commit(path: Path | None = None) -> str | None:
    """The commit (40 hex digits) checked out where ``path`` lies, by default medseg's own
    source tree; None when git is missing or ``path`` is not tracked in a checkout.

    Tracked, not merely inside: an installed medseg in a virtual environment inside some
    other checkout must not report that checkout's commit. Uncommitted changes are not
    reflected.
    """
    folder = Path(path) if path is not None else _SOURCE
    if not folder.is_dir():
        folder = folder.parent
    try:
        tracked = _git(folder, "ls-files", "--error-unmatch", "--", ".")
        head = _git(folder, "rev-parse", "--verify", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return None
    if tracked.returncode or head.returncode:
        return None
    return head.stdout.strip() or None


def _git(folder: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "-C", str(folder), *arguments],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )


def dataset_fingerprint(datalist: list[dict[str, Any]]) -> str:
    """A sha256 hex digest of a datalist (MONAI convention: ``id``, ``image`` paths,
    ``label`` path or None): over the case ids in sorted order and, per case, each file's
    role (image or label), its name relative to the folder all files share, and its size
    in bytes.

    Moving the dataset elsewhere keeps the fingerprint; adding, removing, renaming or
    resizing a file changes it. File contents are not read. Raises ``ConfigError`` naming
    a file that does not exist.
    """
    cases = sorted(datalist, key=lambda case: str(case["id"]))
    files = [Path(path).absolute() for case in cases for _, path in _files(case)]
    root = Path(os.path.commonpath([path.parent for path in files])) if files else Path()
    digest = hashlib.sha256()
    for case in cases:
        entries = []
        for role, name in _files(case):
            path = Path(name).absolute()
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                raise ConfigError(f"{path}: missing (case {case['id']})") from None
            entries.append([role, path.relative_to(root).as_posix(), size])
        digest.update(json.dumps([str(case["id"]), entries]).encode("utf-8") + b"\n")
    return digest.hexdigest()


def _files(case: dict[str, Any]) -> Iterable[tuple[str, str]]:
    image = case.get("image") or []
    for path in [image] if isinstance(image, str | os.PathLike) else image:
        yield "image", str(path)
    if case.get("label") is not None:
        yield "label", str(case["label"])
