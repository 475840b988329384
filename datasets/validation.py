"""Every reason a discovered case cannot be used, found at once and named by file.

``validate`` reads headers only, plus the byte counts that reveal a truncated file and, with
``label_check``, the label data (in bounded slabs) to find values outside the layout's set.
``medseg check`` prints its problems; ``discover(..., validate=True)`` leaves those cases out.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medseg.datasets.base import Case, CaseProblem, DatasetIndex
from medseg.datasets.headers import ImageHeader, UnusableImageError, inspect_image, label_values

AFFINE_TOLERANCE = 1e-4
_LISTED_VALUES = 8


def duplicate_problems(cases: Sequence[Case]) -> list[CaseProblem]:
    """One problem per case whose id another case also has (each names the other files)."""
    by_id: dict[str, list[Case]] = {}
    for case in cases:
        by_id.setdefault(case.id, []).append(case)
    problems = []
    for case_id, group in by_id.items():
        if len(group) < 2:
            continue
        for case in group:
            others = ", ".join(str(c.image[0]) for c in group if c is not case)
            problems.append(
                CaseProblem(case_id, case.image[0], f"duplicate case id (also {others})")
            )
    return problems


def _read(case: Case, path: Path, problems: list[CaseProblem]) -> ImageHeader | None:
    try:
        return inspect_image(path)
    except UnusableImageError as error:
        problems.append(CaseProblem(case.id, path, str(error)))
        return None


def _affine_difference(first: ImageHeader, second: ImageHeader) -> float:
    if first.affine is None or second.affine is None:
        return 0.0
    return float(np.abs(first.affine - second.affine).max())


def _geometry_problems(
    case: Case,
    path: Path,
    header: ImageHeader,
    reference: tuple[Path, ImageHeader],
    tolerance: float,
) -> list[CaseProblem]:
    reference_path, reference_header = reference
    what = "label" if path == case.label else "image"
    if header.shape != reference_header.shape:
        return [
            CaseProblem(
                case.id,
                path,
                f"{what} shape {header.shape} differs from {reference_path.name} "
                f"{reference_header.shape}",
            )
        ]
    difference = _affine_difference(header, reference_header)
    if difference > tolerance:
        return [
            CaseProblem(
                case.id,
                path,
                f"{what} affine differs from {reference_path.name} by {difference:.3g} "
                f"(tolerance {tolerance:g})",
            )
        ]
    return []


def _value_problems(case: Case, label: Path, allowed: set[int]) -> list[CaseProblem]:
    try:
        values = label_values(label)
    except UnusableImageError as error:
        return [CaseProblem(case.id, label, str(error))]
    outside = [v for v in values if not (float(v).is_integer() and int(v) in allowed)]
    if not outside:
        return []
    shown = ", ".join(f"{v:g}" for v in outside[:_LISTED_VALUES])
    more = f" and {len(outside) - _LISTED_VALUES} more" if len(outside) > _LISTED_VALUES else ""
    return [
        CaseProblem(
            case.id,
            label,
            f"label values {shown}{more} outside the layout's set {sorted(allowed)}",
        )
    ]


def case_problems(
    case: Case,
    index: DatasetIndex,
    *,
    label_check: bool = True,
    affine_tolerance: float = AFFINE_TOLERANCE,
) -> list[CaseProblem]:
    """Every problem of one case of ``index``: unreadable or truncated files, a channel
    count other than ``index.channels``, shapes or affines (beyond ``affine_tolerance``, mm)
    that differ between the image files and the label, a label with several channels, and
    (with ``label_check``) label values outside ``index.labels``."""
    problems: list[CaseProblem] = []
    headers = [(path, _read(case, path, problems)) for path in case.image]
    readable = [(path, header) for path, header in headers if header is not None]
    if len(readable) == len(headers) and headers:
        channels = sum(header.channels for _, header in readable)
        if channels != len(index.channels):
            problems.append(
                CaseProblem(
                    case.id,
                    case.image[0],
                    f"{channels} image channels, the dataset has {len(index.channels)} "
                    f"({', '.join(index.channels)})",
                )
            )
    reference = readable[0] if readable else None
    for path, header in readable[1:]:
        problems += _geometry_problems(case, path, header, readable[0], affine_tolerance)
    if case.label is None:
        return problems
    label = _read(case, case.label, problems)
    if label is None:
        return problems
    if label.channels != 1:
        problems.append(
            CaseProblem(case.id, case.label, f"label has {label.channels} channels, expected 1")
        )
        return problems
    if reference is not None:
        problems += _geometry_problems(case, case.label, label, reference, affine_tolerance)
    if label_check:
        problems += _value_problems(case, case.label, index.labels.allowed_values)
    return problems


def validate(
    index: DatasetIndex,
    *,
    label_check: bool = True,
    affine_tolerance: float = AFFINE_TOLERANCE,
) -> list[CaseProblem]:
    """Every problem of every case of ``index`` (see ``case_problems``) and duplicate ids.

    Does not change ``index``; ``index.problems`` (found by discovery) are not repeated.
    """
    problems = duplicate_problems(index.cases)
    for case in index.cases:
        problems += case_problems(
            case, index, label_check=label_check, affine_tolerance=affine_tolerance
        )
    return problems
