"""Turn ``medseg predict`` inputs (files, folders, globs, layout case folders) into cases."""

from __future__ import annotations

import glob
from pathlib import Path

from medseg.datasets import LAYOUTS, discover
from medseg.datasets.base import Case
from medseg.datasets.headers import IMAGE_SUFFIXES
from medseg.errors import ConfigError


def strip_suffix(path: Path) -> str:
    """The file name without its image suffix: ``a/b/case_1.nii.gz`` -> ``case_1``."""
    for suffix in IMAGE_SUFFIXES:
        if path.name.lower().endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def _expand(text: str) -> list[Path]:
    path = Path(text)
    if path.exists():
        return [path]
    # glob.glob, unlike Path.glob, takes absolute patterns such as /data/*/flair.nii.gz
    matches = sorted(Path(m) for m in glob.glob(text))  # noqa: PTH207
    if not matches:
        raise ConfigError(f"{text}: no such file or folder")
    return matches


def _folder_cases(folder: Path, layout: str) -> list[Case]:
    if layout in LAYOUTS and layout != "folder":
        try:
            return discover(layout, folder, need_labels=False).cases
        except ConfigError:
            pass  # not a folder of this layout: read it as a folder of image files
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES) and not _is_dicom(p)
    )
    if not files and _holds_dicom_series(folder):
        return [Case(folder.name, (folder,))]
    return [Case(strip_suffix(p), (p,)) for p in files]


def _is_dicom(path: Path) -> bool:
    # DICOM slices are parts of a series (the folder is the case), never cases of their own.
    return path.name.lower().endswith(".dcm")


def collect_cases(inputs: list[str], layout: str) -> list[Case]:
    """Every case named by ``inputs``, in order, without duplicates.

    A file is one case (its id is the name without suffix); a folder is read in the
    model's ``layout`` when it is one (a BraTS root or case folder gives multi-channel
    cases), else as a folder of image files, else as one DICOM series (the largest when
    there are several); other text is a glob. Raises
    ``ConfigError`` for an input that matches nothing or a folder with no image.
    """
    cases: list[Case] = []
    seen: dict[str, Path] = {}
    for text in inputs:
        for path in _expand(text):
            found = (
                _folder_cases(path, layout)
                if path.is_dir()
                else [Case(strip_suffix(path), (path,))]
            )
            if path.is_dir() and not found:
                raise ConfigError(f"{path}: no image files found ({', '.join(IMAGE_SUFFIXES)})")
            for case in found:
                if case.id in seen and seen[case.id] != case.image[0]:
                    raise ConfigError(
                        f"{case.image[0]}: case id {case.id!r} also names {seen[case.id]}; "
                        "outputs would collide"
                    )
                if case.id not in seen:
                    seen[case.id] = case.image[0]
                    cases.append(case)
    return cases


def _holds_dicom_series(folder: Path) -> bool:
    import SimpleITK as sitk

    return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
