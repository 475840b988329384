"""Turn ``medseg predict`` inputs (files, folders, globs, layout case folders) into cases."""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path

from medseg.datasets import LAYOUT_NAMES, discover
from medseg.datasets.base import Case, CaseProblem
from medseg.datasets.dicom_tree import (
    SeriesRules,
    SkippedInput,
    discover_dicom_tree,
    holds_dicom_below,
)
from medseg.datasets.headers import quiet_itk
from medseg.datasets.image_io import IMAGE_SUFFIXES
from medseg.errors import ConfigError


@dataclass
class Inputs:
    """What ``medseg predict`` was given: the usable ``cases`` in order, the ``problems`` of
    cases a layout's discovery left out (each a failed case, never a silent omission),
    ``roots``: folders given as inputs and dataset roots, which an output may not be or lie
    inside, and ``read_folders``: the folders of every image and label read, which an
    output may not be (a new folder beside or below input files is fine); ``skipped``:
    the files and series of DICOM folder trees left out, each with its reason.
    """

    cases: list[Case] = field(default_factory=list)
    problems: list[CaseProblem] = field(default_factory=list)
    roots: set[Path] = field(default_factory=set)
    read_folders: set[Path] = field(default_factory=set)
    skipped: list[SkippedInput] = field(default_factory=list)


def strip_suffix(path: Path) -> str:
    """The file name without its image suffix: ``a/b/case_1.nii.gz`` -> ``case_1``."""
    for suffix in IMAGE_SUFFIXES:
        if path.name.lower().endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def _expand(text: str) -> list[Path]:
    path = Path(text)
    if path.exists() or path.is_symlink():
        return [path]
    # glob.glob, unlike Path.glob, takes absolute patterns such as /data/*/flair.nii.gz
    matches = sorted(Path(m) for m in glob.glob(text))  # noqa: PTH207
    if not matches:
        raise ConfigError(f"{text}: no such file or folder")
    return matches


def _folder_cases(folder: Path, layout: str, inputs: Inputs, rules: SeriesRules) -> list[Case]:
    if layout in LAYOUT_NAMES and layout != "folder":
        try:
            index = discover(layout, folder, need_labels=False)
        except ConfigError:
            pass  # not a folder of this layout: read it as a folder of image files
        else:
            inputs.roots.add(index.root)
            inputs.problems += index.problems
            return index.cases
    # Anything under an image name that is not a folder is a case, named pipes included:
    # it then fails by name rather than being left out without a word.
    files = sorted(
        p
        for p in folder.iterdir()
        if not p.is_dir() and p.name.lower().endswith(IMAGE_SUFFIXES) and not _is_dicom(p)
    )
    if not files and _holds_dicom_series(folder):
        return [Case(folder.name, (folder,))]
    if not files and holds_dicom_below(folder):
        tree = discover_dicom_tree(folder, rules)
        inputs.skipped += tree.skipped
        return [Case(series.case_id, (series.folder,)) for series in tree.series]
    return [Case(strip_suffix(p), (p,)) for p in files]


def _is_dicom(path: Path) -> bool:
    # DICOM slices are parts of a series (the folder is the case), never cases of their own.
    return path.name.lower().endswith(".dcm")


def collect_cases(inputs: list[str], layout: str, rules: SeriesRules | None = None) -> Inputs:
    """Every case named by ``inputs``, in order, without duplicates (see ``Inputs``).

    A file is one case (its id is the name without suffix); a folder is read in the
    model's ``layout`` when it is one (a BraTS root or case folder gives multi-channel
    cases, and every case the layout rejects is a problem), else as a folder of image
    files, else as one DICOM series (the largest when there are several), else as a DICOM
    folder tree (patient/study/series) whose series that pass ``rules`` (default: any
    modality, 5 images or more) are cases; other text is a glob. Raises ``ConfigError``
    for an input that matches nothing or a folder with no image and no rejected case.
    """
    found_inputs = Inputs()
    seen: dict[str, Path] = {}
    for text in inputs:
        for path in _expand(text):
            if path.is_dir():
                found_inputs.roots.add(path)
            else:
                found_inputs.read_folders.add(path.parent)
            before = len(found_inputs.problems)
            found = (
                _folder_cases(path, layout, found_inputs, rules or SeriesRules())
                if path.is_dir()
                else [Case(strip_suffix(path), (path,))]
            )
            if path.is_dir() and not found and len(found_inputs.problems) == before:
                raise ConfigError(f"{path}: no image files found ({', '.join(IMAGE_SUFFIXES)})")
            for case in found:
                if case.id in seen and seen[case.id] != case.image[0]:
                    raise ConfigError(
                        f"{case.image[0]}: case id {case.id!r} also names {seen[case.id]}; "
                        "outputs would collide"
                    )
                if case.id not in seen:
                    seen[case.id] = case.image[0]
                    found_inputs.cases.append(case)
    for case in found_inputs.cases:
        for file in (*case.image, case.label):
            if file is not None:
                found_inputs.read_folders.add(file if file.is_dir() else file.parent)
    # An input inside an MSD/nnU-Net root (its imagesTr/, say) puts the whole root off
    # limits: labelsTr/ beside it holds references named as the predictions would be.
    for folder in found_inputs.roots | found_inputs.read_folders:
        for candidate in (folder, folder.parent):
            if (candidate / "dataset.json").is_file():
                found_inputs.roots.add(candidate)
    return found_inputs


def _holds_dicom_series(folder: Path) -> bool:
    import SimpleITK as sitk

    with quiet_itk():
        return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
