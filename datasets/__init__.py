"""On-disk layouts turned into datalists: ``discover("brats", root)`` and friends.

Each layout module offers ``discover(root, *, need_labels=True) -> DatasetIndex``; the
``folder`` layout also takes the label names (``labels``) and ``modality`` from the config.
``LAYOUT_NAMES`` is the one list of layouts the config schema and the CLI offer; importing
this package stays light (no numpy, nibabel or ITK) so that they may read it at start-up.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medseg.datasets.base import Case, CaseProblem, DatasetIndex, LabelScheme
from medseg.errors import ConfigError

LAYOUT_NAMES = ("brats", "lits", "msd", "em", "isic", "folder")
"""Every on-disk layout; layout ``name`` is read by ``medseg.datasets.<name>.discover``."""


def layout_reader(layout: str) -> Callable[..., DatasetIndex]:
    """The ``discover`` function of ``layout``; ``ConfigError`` naming the layouts otherwise."""
    if layout not in LAYOUT_NAMES:
        raise ConfigError(f"layout {layout!r} is not supported; layouts: {', '.join(LAYOUT_NAMES)}")
    reader: Callable[..., DatasetIndex] = importlib.import_module(
        f"medseg.datasets.{layout}"
    ).discover
    return reader


def discover(
    layout: str,
    root: str | Path,
    *,
    need_labels: bool = True,
    validate: bool = False,
    label_check: bool = True,
    **options: Any,
) -> DatasetIndex:
    """Read ``root`` as a dataset in ``layout`` and leave out every case with a problem.

    ``need_labels=False`` accepts cases without a label file (inference, test sets).
    Cases sharing an id are always problems. ``validate=True`` also reads every file's
    header and checks what ``medseg.datasets.validation.validate`` checks (``label_check``:
    label values too, which reads the label data). ``options`` go to the layout (folder:
    ``labels={"liver": 1}``, ``modality="ct"``). Raises ``ConfigError`` for an unknown
    layout, an option the layout does not take, or a folder the layout cannot read.
    """
    from medseg.datasets import validation

    reader = layout_reader(layout)
    accepted = set(inspect.signature(reader).parameters) - {"root", "need_labels"}
    if set(options) - accepted:
        unknown = ", ".join(sorted(set(options) - accepted))
        raise ConfigError(f"layout {layout!r} takes no option {unknown}")
    index = reader(Path(root), need_labels=need_labels, **options)
    found = (
        validation.validate(index, label_check=label_check)
        if validate
        else validation.duplicate_problems(index.cases)
    )
    unusable = {problem.case_id for problem in found}
    index.cases = [case for case in index.cases if case.id not in unusable]
    index.problems += found
    return index


__all__ = [
    "LAYOUT_NAMES",
    "Case",
    "CaseProblem",
    "DatasetIndex",
    "LabelScheme",
    "discover",
    "layout_reader",
]
