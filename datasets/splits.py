"""Deterministic k-fold splits from a seed, grouped by patient, saved to and read from JSON."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from medseg.errors import ConfigError
from medseg.files import write_text_atomic

# BraTS 2023 ids end in a time point (BraTS-GLI-00000-000, -001): one patient, one group.
_TIMEPOINT = re.compile(r"^(BraTS-[A-Z]+-\d{5})-\d{3}$")


def patient_of(case_id: str) -> str:
    """The patient a case belongs to, so that a patient's scans never straddle folds."""
    match = _TIMEPOINT.match(case_id)
    return match.group(1) if match else case_id


def kfold_splits(
    case_ids: Sequence[str],
    folds: int,
    seed: int,
    group: Callable[[str], str] = patient_of,
) -> list[dict[str, list[str]]]:
    """Split ``case_ids`` into ``folds`` folds, shuffled by ``seed``, whole groups per fold.

    Returns one ``{"train": [...], "val": [...]}`` per fold (ids sorted); every id is in
    exactly one validation set. Raises ``ConfigError`` with fewer groups than folds.
    """
    groups: dict[str, list[str]] = {}
    for case_id in sorted(case_ids):
        groups.setdefault(group(case_id), []).append(case_id)
    if len(groups) < folds:
        raise ConfigError(f"{len(groups)} patients cannot make {folds} folds; lower data.folds")
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    assignment = {name: index % folds for index, name in enumerate(order)}
    splits = []
    for fold in range(folds):
        val = sorted(c for name, ids in groups.items() if assignment[name] == fold for c in ids)
        train = sorted(c for name, ids in groups.items() if assignment[name] != fold for c in ids)
        splits.append({"train": train, "val": val})
    return splits


def save_splits(path: Path, splits: list[dict[str, list[str]]]) -> None:
    """Write ``splits`` as JSON atomically."""
    write_text_atomic(path, json.dumps(splits, indent=1) + "\n")


def load_splits(path: Path) -> list[dict[str, list[str]]]:
    """Read splits written by ``save_splits``; ``ConfigError`` when the file is malformed."""
    try:
        splits = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConfigError(f"{path}: cannot read splits ({error})") from None
    valid = isinstance(splits, list) and all(
        isinstance(s, dict) and set(s) == {"train", "val"} for s in splits
    )
    if not valid:
        raise ConfigError(f"{path}: splits must be a list of {{'train': [...], 'val': [...]}}")
    return splits
