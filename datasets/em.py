"""Electron microscopy stacks in the ISBI 2012 layout: ``NAME-volume.tif`` + ``NAME-labels.tif``.

ISBI 2012 ships ``train-volume.tif`` and ``train-labels.tif`` (30 serial sections of
512x512, uint8, as multi-page TIFF; labels 0 on membranes, 255 inside cells) and an
unlabelled ``test-volume.tif``. Other EM volumes follow the same naming as 3D TIFF or NIfTI
(``cremi_a-volume.nii.gz`` + ``cremi_a-labels.nii.gz``).

Each stack is one 3D case of shape (x, y, sections), not a set of 2D cases: the sections
are serial cuts through the same cells, so splitting them into cases would let
neighbouring sections (nearly the same image) fall on both sides of a train/validation
split, and would need slice indices the datalist has no place for. The reader gives the
stack its anisotropic spacing (4 x 4 x 50 nm for ISBI, when the TIFF states it), and the
2D networks run over it slice by slice.

Scheme: classes ``cell`` (255, channel 0, the background) and ``membrane`` (0, channel 1),
so the scored structure is the membrane, as in the challenge, and a prediction written
back uses the ISBI values. Stacks whose name starts with ``test`` are the challenge's
unlabelled test stacks: cases only when labels are not needed.
"""

from __future__ import annotations

from pathlib import Path

from medseg.datasets.base import Case, CaseProblem, DatasetIndex, LabelScheme
from medseg.datasets.image_io import NIFTI_FILE_SUFFIXES, TIFF_SUFFIXES, suffix_of
from medseg.errors import ConfigError

LABELS = LabelScheme.classes({"cell": 255, "membrane": 0})
SUFFIXES = (*TIFF_SUFFIXES, *NIFTI_FILE_SUFFIXES)


def _stacks(root: Path, kind: str) -> dict[str, Path]:
    """Stack name -> file, for the files of ``root`` named ``NAME-<kind><suffix>``."""
    found: dict[str, Path] = {}
    for path in sorted(root.iterdir()):
        suffix = suffix_of(path)
        stem = path.name[: -len(suffix)] if suffix in SUFFIXES else ""
        if stem.endswith(f"-{kind}") and not path.name.startswith("."):
            found.setdefault(stem[: -len(kind) - 1], path)
    return found


def discover(root: Path, *, need_labels: bool = True) -> DatasetIndex:
    """Read a folder of EM stacks (see the module docstring) into an index.

    Case ids are the stack names (``train``). A labels file without its volume is a
    problem; so is, with ``need_labels``, a volume without labels unless its name starts
    with ``test``. Raises ``ConfigError`` when ``root`` is not a folder or holds no stack.
    """
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"{root}: folder not found")
    volumes, labels = _stacks(root, "volume"), _stacks(root, "labels")
    if not volumes and not labels:
        raise ConfigError(f"{root}: no EM stacks (expected train-volume.tif and train-labels.tif)")
    cases: list[Case] = []
    problems: list[CaseProblem] = []
    for name, volume in sorted(volumes.items()):
        label = labels.get(name)
        if label is None and name.startswith("test"):
            if not need_labels:
                cases.append(Case(name, (volume,), None))
        elif label is None and need_labels:
            expected = volume.with_name(f"{name}-labels{suffix_of(volume)}")
            problems.append(CaseProblem(name, expected, f"labels missing for {volume.name}"))
        else:
            cases.append(Case(name, (volume,), label))
    for name in sorted(set(labels) - set(volumes)):
        problems.append(CaseProblem(name, labels[name], f"volume missing (expected {name}-volume)"))
    return DatasetIndex(
        layout="em",
        root=root,
        cases=cases,
        channels=("em",),
        modality="em",
        labels=LABELS,
        problems=problems,
    )
