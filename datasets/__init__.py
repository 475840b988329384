"""On-disk layouts turned into datalists: ``discover("brats", root)`` and friends.

Each layout module offers ``discover(root, *, need_labels=True) -> DatasetIndex``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from medseg.datasets import brats
from medseg.datasets.base import Case, CaseProblem, DatasetIndex, LabelScheme
from medseg.errors import ConfigError

LAYOUTS: dict[str, Callable[..., DatasetIndex]] = {
    "brats": brats.discover,
}


def discover(layout: str, root: str | Path, *, need_labels: bool = True) -> DatasetIndex:
    """Read ``root`` as a dataset in ``layout``; raises ``ConfigError`` for an unknown layout.

    ``need_labels=False`` accepts cases without a label file (inference, test sets).
    """
    if layout not in LAYOUTS:
        raise ConfigError(f"layout {layout!r} is not supported; layouts: {', '.join(LAYOUTS)}")
    return LAYOUTS[layout](Path(root), need_labels=need_labels)


__all__ = ["LAYOUTS", "Case", "CaseProblem", "DatasetIndex", "LabelScheme", "discover"]
