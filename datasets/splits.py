"""Deterministic k-fold and hold-out splits from a seed, grouped by patient, kept in JSON."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from medseg.errors import ConfigError
from medseg.files import read_regular_text, write_text_atomic

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


def holdout_split(
    case_ids: Sequence[str],
    fraction: float,
    seed: int,
    group: Callable[[str], str] = patient_of,
) -> dict[str, list[str]]:
    """Hold out about ``fraction`` of the patients of ``case_ids`` for validation.

    Returns ``{"train": [...], "val": [...]}`` (ids sorted): whole groups on each side,
    shuffled by ``seed``, at least one group on each side. Raises ``ConfigError`` for a
    fraction outside (0, 1) or fewer than two groups.
    """
    if not 0 < fraction < 1:
        raise ConfigError(f"hold-out fraction {fraction} must lie strictly between 0 and 1")
    groups: dict[str, list[str]] = {}
    for case_id in sorted(case_ids):
        groups.setdefault(group(case_id), []).append(case_id)
    if len(groups) < 2:
        raise ConfigError(f"{len(groups)} patient(s) cannot be split into training and hold-out")
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    held = min(len(order) - 1, max(1, round(fraction * len(order))))
    val = sorted(c for name in order[:held] for c in groups[name])
    train = sorted(c for name in order[held:] for c in groups[name])
    return {"train": train, "val": val}


def save_splits(path: Path, splits: list[dict[str, list[str]]]) -> None:
    """Write ``splits`` as JSON atomically."""
    write_text_atomic(path, json.dumps(splits, indent=1) + "\n")


def load_splits(path: Path) -> list[dict[str, list[str]]]:
    """Read splits written by ``save_splits``; ``ConfigError`` when the file is malformed."""
    try:
        splits = json.loads(read_regular_text(path))
    except (OSError, ValueError) as error:
        raise ConfigError(f"{path}: cannot read splits ({error})") from error
    valid = isinstance(splits, list) and all(
        isinstance(s, dict) and set(s) == {"train", "val"} for s in splits
    )
    if not valid:
        raise ConfigError(f"{path}: splits must be a list of {{'train': [...], 'val': [...]}}")
    return splits
