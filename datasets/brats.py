"""BraTS layouts: 2021 (``BraTS2021_XXXXX``) and 2023 (``BraTS-GLI-XXXXX-XXX`` and siblings).

The two releases name their modalities differently; medseg orders channels the same way
for both (FLAIR, T1, T1ce, T2 = t2f, t1n, t1c, t2w) so a model trained on one release
reads the other. Label values: 2021 uses 0/1/2/4, 2023 uses 0/1/2/3 (ET = 3).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from medseg.datasets.base import Case, CaseProblem, DatasetIndex, LabelScheme
from medseg.errors import ConfigError

CHANNEL_NAMES = ("flair", "t1", "t1ce", "t2")


@dataclass(frozen=True)
class BratsRelease:
    """How one BraTS release names its case folders, files and labels."""

    name: str
    folder_pattern: re.Pattern[str]
    separator: str
    modalities: tuple[str, ...]
    enhancing_label: int

    def file(self, folder: Path, suffix: str) -> Path:
        """The file of modality (or ``seg``) ``suffix`` inside case ``folder``."""
        return folder / f"{folder.name}{self.separator}{suffix}.nii.gz"

    def labels(self) -> LabelScheme:
        """Regions TC, WT, ET; painted back as WT -> 2, TC -> 1, ET -> enhancing label."""
        et = self.enhancing_label
        return LabelScheme(
            mode="regions",
            names=("TC", "WT", "ET"),
            values=((1, et), (1, 2, et), (et,)),
            paint=(1, 2, et),
            paint_order=(1, 0, 2),
        )


RELEASES = (
    BratsRelease("BraTS 2021", re.compile(r"^BraTS20\d\d_\d{5}$"), "_", CHANNEL_NAMES, 4),
    BratsRelease(
        "BraTS 2023",
        re.compile(r"^BraTS-[A-Z]+-\d{5}-\d{3}$"),
        "-",
        ("t2f", "t1n", "t1c", "t2w"),
        3,
    ),
)


def detect_release(folders: list[Path], root: Path) -> BratsRelease:
    """The release whose folder names ``folders`` follow; ``ConfigError`` if none or both."""
    found = {r.name: r for r in RELEASES for f in folders if r.folder_pattern.match(f.name)}
    if not found:
        raise ConfigError(
            f"{root}: no BraTS case folders (expected BraTS2021_00000/ or BraTS-GLI-00000-000/)"
        )
    if len(found) > 1:
        raise ConfigError(f"{root}: mixes {' and '.join(sorted(found))} case folders")
    return next(iter(found.values()))


def case_from_folder(
    folder: Path, release: BratsRelease, *, need_label: bool
) -> Case | CaseProblem:
    """The case in ``folder``, or the problem (first missing file) that makes it unusable."""
    images = tuple(release.file(folder, modality) for modality in release.modalities)
    for path in images:
        if not path.is_file():
            return CaseProblem(folder.name, path, "modality file missing")
    label = release.file(folder, "seg")
    if not label.is_file():
        if need_label:
            return CaseProblem(folder.name, label, "segmentation file missing")
        return Case(folder.name, images, None)
    return Case(folder.name, images, label)


def discover(root: Path, *, need_labels: bool = True) -> DatasetIndex:
    """Read a BraTS root (a folder of case folders) or one case folder into an index.

    Every case folder missing a modality (or, with ``need_labels``, its segmentation) is
    left out and listed in ``problems``. Raises ``ConfigError`` when ``root`` is not a
    folder or holds no BraTS case folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"{root}: folder not found")
    own_release = [r for r in RELEASES if r.folder_pattern.match(root.name)]
    if own_release:
        folders = [root]
    else:
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        folders = [p for p in folders if any(r.folder_pattern.match(p.name) for r in RELEASES)]
    release = own_release[0] if own_release else detect_release(folders, root)
    cases: list[Case] = []
    problems: list[CaseProblem] = []
    for folder in folders:
        found = case_from_folder(folder, release, need_label=need_labels)
        if isinstance(found, Case):
            cases.append(found)
        else:
            problems.append(found)
    return DatasetIndex(
        layout="brats",
        root=root,
        cases=cases,
        channels=CHANNEL_NAMES,
        modality="mri",
        labels=release.labels(),
        problems=problems,
    )
