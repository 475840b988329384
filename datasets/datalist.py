"""MONAI-style datalist JSON files, with every path kept inside the dataset root.

A datalist is ``{"training": [{"image": ..., "label": ...}], "validation": [...], "test":
[...]}``; an image is one path or a list (one per channel), a test entry may be a bare path,
and an entry may name its ``id``. Paths are relative to the dataset root (absolute ones
must lie inside it), so a datalist cannot make medseg read or overwrite files elsewhere.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medseg.datasets.base import Case
from medseg.datasets.image_io import suffix_of
from medseg.errors import ConfigError
from medseg.files import read_regular_text

SECTIONS = ("training", "validation", "test")


class OutsideRootError(ValueError):
    """A path from a dataset file or datalist points outside the dataset root."""


def resolve_inside(root: Path, text: str) -> Path:
    """``text`` (relative to ``root``, or absolute) as a path, checked to lie inside ``root``.

    The check is on the path as written, after collapsing ``..``: a link the user placed
    inside the root is trusted. Raises ``OutsideRootError`` for a path that leaves the root.
    """
    base = os.path.normpath(Path(root).absolute())
    resolved = os.path.normpath(Path(base) / text)
    if os.path.commonpath([base, resolved]) != base:
        raise OutsideRootError(f"{text}: path leaves the dataset root {root}")
    return Path(resolved)


def case_id_of(path: Path) -> str:
    """The case id a file stands for: its name without the image suffix."""
    suffix = suffix_of(path)
    return path.name[: -len(suffix)] if suffix else path.stem


def _entry_case(entry: Any, root: Path, where: str) -> Case:
    if isinstance(entry, str):
        entry = {"image": entry}
    if not isinstance(entry, dict) or "image" not in entry:
        raise ConfigError(f"{where}: expected a path or {{'image': ..., 'label': ...}}")
    images = entry["image"] if isinstance(entry["image"], list) else [entry["image"]]
    if not images or not all(isinstance(p, str) for p in images):
        raise ConfigError(f"{where}: 'image' must be a path or a non-empty list of paths")
    label = entry.get("label")
    if label is not None and not isinstance(label, str):
        raise ConfigError(f"{where}: 'label' must be a path")
    try:
        image_paths = tuple(resolve_inside(root, p) for p in images)
        label_path = None if label is None else resolve_inside(root, label)
    except OutsideRootError as error:
        raise ConfigError(f"{where}: {error}") from error
    case_id = str(entry.get("id") or case_id_of(image_paths[0]))
    return Case(case_id, image_paths, label_path)


def load_datalist(
    path: str | Path, root: str | Path, *, sections: Sequence[str] = SECTIONS
) -> list[Case]:
    """The cases of the datalist JSON at ``path``, from the ``sections`` it has, in order.

    Paths are taken relative to ``root``. Raises ``ConfigError`` naming every entry that is
    malformed or leaves ``root`` (all at once), or when the file is unreadable or has none
    of ``sections``.
    """
    path, root = Path(path), Path(root)
    try:
        data = json.loads(read_regular_text(path))
    except (OSError, ValueError) as error:
        raise ConfigError(f"{path}: cannot read datalist ({error})") from error
    if not isinstance(data, dict) or not any(s in data for s in sections):
        raise ConfigError(f"{path}: a datalist needs a list under {' or '.join(sections)}")
    cases, errors = [], []
    for section in sections:
        entries = data.get(section, [])
        if not isinstance(entries, list):
            errors.append(f"{path}: {section!r} must be a list")
            continue
        for number, entry in enumerate(entries):
            try:
                cases.append(_entry_case(entry, root, f"{path} {section}[{number}]"))
            except ConfigError as error:
                errors.append(str(error))
    if errors:
        raise ConfigError("; ".join(errors))
    return cases
