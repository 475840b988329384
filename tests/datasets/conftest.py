"""Small phantoms of every layout, written once per session and copied by tests that edit."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from medseg.datasets.synthetic import synthesize

# layout written -> (layout read, shape, cases): tiny, but big enough for every structure.
PHANTOMS = {
    "brats": ("brats", (32, 32, 24), 2),
    "lits": ("lits", (64, 64, 40), 2),
    "msd": ("msd", (32, 32, 24), 2),
    "nnunet": ("msd", (32, 32, 24), 2),
    "em": ("em", (64, 64, 8), 2),
    "isic": ("isic", (80, 60), 2),
}


@pytest.fixture(scope="session")
def phantom_roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Written layout name -> root of its phantoms (seed 7); treat as read-only."""
    base = tmp_path_factory.mktemp("phantoms")
    roots = {}
    for name, (_, shape, cases) in PHANTOMS.items():
        synthesize(name, base / name, cases=cases, shape=shape, seed=7)
        roots[name] = base / name
    return roots


@pytest.fixture
def copy_of(phantom_roots: dict[str, Path], tmp_path: Path):
    """``copy_of("lits")``: a private copy of that layout's phantoms, free to break."""

    def copy(name: str) -> Path:
        target = tmp_path / name
        shutil.copytree(phantom_roots[name], target)
        return target

    return copy
