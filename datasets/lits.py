"""LiTS (Liver Tumor Segmentation challenge, 2017): ``volume-N.nii`` + ``segmentation-N.nii``.

The release ships two training batches (``Training Batch 1/``, ``Training Batch 2/``) of
abdominal CT in Hounsfield units with labels 0 background, 1 liver, 2 tumour, and the test
volumes as ``test-volume-N.nii``. Volumes and labels may sit in the root or in any folder
below it, together or apart, and may be gzipped (``.nii.gz``) as some mirrors ship them.
Case ids are ``volume-N`` and ``test-volume-N``: the names the challenge uses.
"""

from __future__ import annotations

import re
from pathlib import Path

from medseg.datasets.base import Case, CaseProblem, DatasetIndex, LabelScheme
from medseg.errors import ConfigError

LABELS = LabelScheme.classes({"background": 0, "liver": 1, "tumour": 2})
_FILE = re.compile(r"^(test-volume|volume|segmentation)-(\d+)\.nii(\.gz)?$")


def _files(root: Path) -> dict[str, dict[str, list[Path]]]:
    """kind ("volume", "test-volume", "segmentation") -> number -> files found."""
    found: dict[str, dict[str, list[Path]]] = {}
    for path in sorted(root.rglob("*.nii*")):
        match = _FILE.match(path.name)
        if match and not any(part.startswith(".") for part in path.relative_to(root).parts):
            found.setdefault(match.group(1), {}).setdefault(match.group(2), []).append(path)
    return found


def discover(root: Path, *, need_labels: bool = True) -> DatasetIndex:
    """Read a LiTS root into an index of single-channel CT cases.

    Training cases pair ``volume-N`` with ``segmentation-N``; with ``need_labels`` a volume
    without its segmentation (and always a segmentation without its volume) is a problem.
    Test volumes (``test-volume-N``) are cases only when ``need_labels`` is False. A number
    found twice (two batch folders, or ``.nii`` beside ``.nii.gz``) gives two cases of one
    id, which ``validate`` reports. Raises ``ConfigError`` when ``root`` is not a folder or
    holds no LiTS file.
    """
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"{root}: folder not found")
    files = _files(root)
    if not files:
        raise ConfigError(f"{root}: no LiTS files (expected volume-0.nii, segmentation-0.nii)")
    volumes, segmentations = files.get("volume", {}), files.get("segmentation", {})
    cases: list[Case] = []
    problems: list[CaseProblem] = []
    for number in sorted(volumes, key=int):
        labels = segmentations.get(number, [])
        for volume in volumes[number]:
            beside = [label for label in labels if label.parent == volume.parent]
            label = (beside or labels)[0] if beside or labels else None
            if label is None and need_labels:
                expected = volume.with_name(f"segmentation-{number}.nii")
                problems.append(
                    CaseProblem(
                        f"volume-{number}",
                        expected,
                        f"segmentation missing (expected {expected.name} for {volume.name})",
                    )
                )
                continue
            cases.append(Case(f"volume-{number}", (volume,), label))
    for number in sorted(set(segmentations) - set(volumes), key=int):
        label = segmentations[number][0]
        problems.append(
            CaseProblem(
                f"volume-{number}",
                label,
                f"volume missing (expected volume-{number}.nii beside {label.name})",
            )
        )
    if not need_labels:
        for number in sorted(files.get("test-volume", {}), key=int):
            for volume in files["test-volume"][number]:
                cases.append(Case(f"test-volume-{number}", (volume,), None))
    return DatasetIndex(
        layout="lits",
        root=root,
        cases=cases,
        channels=("ct",),
        modality="ct",
        labels=LABELS,
        problems=problems,
    )
