"""DICOM folder trees as archives export them (patient/study/series): one case per series.

Every file under the root is read as a DICOM header (pydicom, pixel data left unread);
files are grouped by SeriesInstanceUID and each series that passes the selection rules
(modality, minimum number of slices) becomes a case named from its headers. Whatever is
left out — a file that is not DICOM, a link, a series of the wrong modality or too few
slices — is listed with its reason. Header strings only ever reach a case name through
``case_name``, which keeps letters, digits, ``-`` and ``_``: no path can come from them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.errors import ConfigError

logger = logging.getLogger(__name__)

# The SOP class of a DICOMDIR, the media index some exports put at the root.
DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
# The tags discovery needs, read without the rest of the header.
HEADER_TAGS = [
    "SOPClassUID",
    "SeriesInstanceUID",
    "Modality",
    "SeriesDescription",
    "SeriesNumber",
    "PatientID",
    "StudyDate",
    "Rows",
    "NumberOfFrames",
]
NAME_PART_CHARACTERS = 24
# Which DICOM modalities a model of each medseg modality reads by default.
MODALITIES = {"ct": frozenset({"CT"}), "mri": frozenset({"MR"})}


@dataclass(frozen=True)
class SeriesRules:
    """Which series become cases: ``modalities`` (DICOM Modality values, upper case; None
    takes any) and at least ``min_slices`` images (frames of multi-frame files counted)."""

    modalities: frozenset[str] | None = None
    min_slices: int = 5


def series_rules(
    model_modality: str, modalities: list[str] | None = None, min_slices: int = 5
) -> SeriesRules:
    """The selection rules of a prediction: ``modalities`` as given (DICOM Modality values;
    ``any`` takes every one), by default CT for CT models, MR for MRI models and any other
    modality for the rest; at least ``min_slices`` images per series."""
    if modalities is None:
        return SeriesRules(MODALITIES.get(model_modality), min_slices)
    wanted = frozenset(m.strip().upper() for m in modalities if m.strip())
    return SeriesRules(None if "ANY" in wanted or not wanted else wanted, min_slices)


@dataclass(frozen=True)
class SkippedInput:
    """A file or series left out of a prediction, and why."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: skipped: {self.reason}"


@dataclass(frozen=True)
class DicomSeries:
    """One series found in a tree: its UID, the folder holding its files, how many files
    and images (frames counted) it has, its modality and the case name it is predicted
    under."""

    uid: str
    folder: Path
    files: int
    slices: int
    modality: str
    case_id: str


@dataclass
class DicomTree:
    """What ``discover_dicom_tree`` found: the selected ``series`` (in case-name order) and
    every ``skipped`` file or series with its reason."""

    series: list[DicomSeries] = field(default_factory=list)
    skipped: list[SkippedInput] = field(default_factory=list)


@dataclass
class _SeriesFiles:
    uid: str
    modality: str = ""
    name_parts: tuple[str, ...] = ()
    folders: dict[Path, int] = field(default_factory=lambda: defaultdict(int))
    slices: int = 0


def case_name(parts: tuple[str, ...], uid: str) -> str:
    """A readable, filesystem-safe and stable case name: the non-empty ``parts`` (patient,
    study date, series number and description) cleaned to letters, digits, ``-`` and
    ``_``, then 8 hex digits of the series UID's SHA-1, which keep names unique."""
    cleaned = []
    for part in parts:
        text = re.sub(r"[^A-Za-z0-9-]+", "_", part).strip("_-")[:NAME_PART_CHARACTERS]
        if text:
            cleaned.append(text)
    digest = hashlib.sha1(uid.encode("utf-8"), usedforsecurity=False).hexdigest()[:8]
    return "_".join([*cleaned, digest])


def holds_dicom_below(root: Path) -> bool:
    """Whether any sub-folder of ``root`` (not ``root`` itself) holds a file that starts
    like DICOM (the ``DICM`` marker after the 128-byte preamble)."""
    for folder, _, files in os.walk(root):
        if Path(folder) == root:
            continue
        for name in files:
            if _has_dicom_marker(Path(folder) / name):
                return True
    return False


def _has_dicom_marker(path: Path) -> bool:
    try:
        if not stat.S_ISREG(path.lstat().st_mode):
            return False
        with path.open("rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def discover_dicom_tree(root: Path, rules: SeriesRules) -> DicomTree:
    """Read the DICOM tree under ``root`` into series that pass ``rules``.

    Links are not followed and non-regular files (pipes, devices) never opened. A folder
    holding several selected series gives the one medseg's series reader takes (the most
    images, the lowest UID among equals); the others are skipped, named. Raises
    ``ConfigError`` when no series is selected, or pydicom (the ``dicom`` extra) is not
    installed.
    """
    try:
        import pydicom
    except ImportError:
        raise ConfigError(
            f"{root}: reading a DICOM folder tree needs pydicom: pip install 'medseg[dicom]'"
        ) from None
    tree = DicomTree()
    found: dict[str, _SeriesFiles] = {}
    for folder, folders, files in os.walk(root):
        folders.sort()
        for name in sorted(folders):
            if (Path(folder) / name).is_symlink():
                link = Path(folder) / name
                tree.skipped.append(SkippedInput(link, "link to a folder (not followed)"))
        for name in sorted(files):
            path = Path(folder) / name
            reason = _read_into(path, found, pydicom)
            if reason is not None:
                tree.skipped.append(SkippedInput(path, reason))
    for series in found.values():
        reason = _rejection(series, rules)
        if reason is not None:
            where = next(iter(series.folders)) if len(series.folders) == 1 else root
            tree.skipped.append(SkippedInput(where, f"series {series.uid}: {reason}"))
            continue
        ((series_folder, series_files),) = series.folders.items()
        tree.series.append(
            DicomSeries(
                series.uid,
                series_folder,
                series_files,
                series.slices,
                series.modality,
                case_name(series.name_parts, series.uid),
            )
        )
    tree.series = _one_per_folder(tree.series, tree.skipped)
    tree.series.sort(key=lambda series: series.case_id)
    if not tree.series:
        reasons = "; ".join(str(item) for item in tree.skipped[:3])
        raise ConfigError(f"{root}: no DICOM series selected ({reasons})")
    return tree


def _read_into(path: Path, found: dict[str, _SeriesFiles], pydicom: Any) -> str | None:
    """Add the DICOM file ``path`` to its series in ``found``; the reason it was not added."""
    try:
        mode = path.lstat().st_mode
    except OSError as error:
        return f"unreadable ({error.strerror or error})"
    if stat.S_ISLNK(mode):
        return "link (not followed)"
    if not stat.S_ISREG(mode):
        return "not a regular file (a pipe, socket or device)"
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=HEADER_TAGS)
    except Exception as error:  # pydicom raises many types for files that are not DICOM
        return f"not DICOM ({type(error).__name__})"
    if str(header.get("SOPClassUID", "")) == DICOMDIR_CLASS:
        return "DICOMDIR index"
    uid = str(header.get("SeriesInstanceUID", "")).strip()
    if not uid:
        return "no SeriesInstanceUID"
    if "Rows" not in header:
        return f"not an image ({header.get('Modality', 'no modality')})"
    series = found.setdefault(uid, _SeriesFiles(uid))
    series.modality = str(header.get("Modality", "")).upper()
    series.name_parts = (
        str(header.get("PatientID", "")),
        str(header.get("StudyDate", "")),
        f"S{header.get('SeriesNumber', '')}" if header.get("SeriesNumber") else "",
        str(header.get("SeriesDescription", "")),
    )
    series.folders[path.parent] += 1
    series.slices += int(header.get("NumberOfFrames", 1) or 1)
    return None


def _rejection(series: _SeriesFiles, rules: SeriesRules) -> str | None:
    if rules.modalities is not None and series.modality not in rules.modalities:
        wanted = ", ".join(sorted(rules.modalities))
        return f"modality {series.modality or 'missing'} (selected: {wanted})"
    if series.slices < rules.min_slices:
        return f"{series.slices} images, fewer than the minimum of {rules.min_slices}"
    if len(series.folders) > 1:
        return f"files spread over {len(series.folders)} folders (medseg reads a series from one)"
    return None


def _one_per_folder(series: list[DicomSeries], skipped: list[SkippedInput]) -> list[DicomSeries]:
    by_folder: dict[Path, list[DicomSeries]] = defaultdict(list)
    for item in series:
        by_folder[item.folder].append(item)
    kept = []
    for folder, items in by_folder.items():
        # The rule of ``medseg.datasets.headers.dicom_series_files``, which reads the folder.
        items.sort(key=lambda item: (-item.files, item.uid))
        kept.append(items[0])
        for other in items[1:]:
            skipped.append(
                SkippedInput(
                    folder,
                    f"series {other.uid}: shares its folder with series {items[0].uid}, "
                    "which is read (one series per folder)",
                )
            )
    return kept


def report_skipped_inputs(skipped: list[SkippedInput], shown: int = 20) -> None:
    """Log what DICOM tree discovery left out: the first ``shown`` entries one by one, then
    how many more."""
    for item in skipped[:shown]:
        logger.warning("%s", item)
    if len(skipped) > shown:
        logger.warning(
            "... and %d more skipped inputs (all in predict_report.json)", len(skipped) - shown
        )
