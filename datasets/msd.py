"""Medical Segmentation Decathlon and nnU-Net roots: ``dataset.json``, ``imagesTr/``, ``labelsTr/``.

Three generations share the folder layout, and all three are read as they are:

- **MSD** (``Task03_Liver``): ``dataset.json`` lists ``training`` pairs and ``test`` images;
  a multi-channel case is one 4D file (``Task01_BrainTumour``: FLAIR, T1w, T1gd, T2w);
  ``modality`` names the channels, ``labels`` maps values to names (``{"0": "background"}``).
- **nnU-Net v1** (``Task001_BrainTumour``): MSD's ``dataset.json``, but each listed image is
  stored per channel beside its listed name (``la_003_0000.nii.gz``).
- **nnU-Net v2** (``Dataset001_BrainTumour``): no list; the cases are the files of
  ``imagesTr`` named ``CASE_XXXX<file_ending>`` (one per channel), ``channel_names`` names the
  channels, ``labels`` maps names to values (``{"background": 0}``) or to region value sets
  (``{"whole tumor": [1, 2, 3]}``, painted back in ``regions_class_order``).

Channel names decide the modality: any channel called CT makes the dataset CT (nnU-Net's
rule for CT normalisation), R/G/B make it RGB, anything else is MRI. Hidden files (the
``._`` copies macOS leaves in the MSD archives) are ignored.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from medseg.datasets.base import Case, CaseProblem, DatasetIndex, LabelScheme
from medseg.datasets.datalist import OutsideRootError, case_id_of, resolve_inside
from medseg.datasets.image_io import BITMAP_SUFFIXES, suffix_of
from medseg.errors import ConfigError

_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def label_scheme(
    labels: dict[str, Any], regions_order: list[int] | None, where: str
) -> LabelScheme:
    """The scheme of a ``dataset.json`` ``labels`` entry, in either MSD or nnU-Net v2 form.

    Classes need value 0; regions (nnU-Net v2 lists of values) need ``regions_order``, one
    painted value per region. Raises ``ConfigError`` naming ``where`` otherwise.
    """
    if labels and all(k.isdigit() and isinstance(v, str) for k, v in labels.items()):
        named: dict[str, Any] = {name: int(value) for value, name in labels.items()}
    else:
        named = dict(labels)
    if any(isinstance(v, list) for v in named.values()):
        return _regions(named, regions_order, where)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in named.values()):
        raise ConfigError(f"{where}: labels must map names to integer values, got {labels}")
    ordered = dict(sorted(named.items(), key=lambda item: item[1]))
    if 0 not in ordered.values():
        raise ConfigError(f"{where}: labels need a background of value 0, got {labels}")
    return LabelScheme.classes(ordered)


def _regions(named: dict[str, Any], order: list[int] | None, where: str) -> LabelScheme:
    regions = {
        name: tuple(value if isinstance(value, list) else [value])
        for name, value in named.items()
        if value not in (0, [0])
    }
    simple = all(
        all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)
        for values in regions.values()
    )
    if not simple or order is None or len(order) != len(regions):
        raise ConfigError(
            f"{where}: region labels need positive integer values and a regions_class_order "
            f"with one value per region ({len(regions)}); got labels {named}, order {order}"
        )
    return LabelScheme(
        mode="regions",
        names=tuple(regions),
        values=tuple(regions.values()),
        paint=tuple(int(v) for v in order),
        paint_order=tuple(range(len(regions))),
    )


def _channel_names(data: dict[str, Any], where: str) -> tuple[str, ...]:
    names = data.get("channel_names", data.get("modality"))
    if not isinstance(names, dict) or not names or not all(k.isdigit() for k in names):
        raise ConfigError(f"{where}: needs 'modality' or 'channel_names' like {{'0': 'CT'}}")
    return tuple(str(names[k]) for k in sorted(names, key=int))


def _modality(channels: tuple[str, ...]) -> str:
    lowered = {name.lower() for name in channels}
    if "ct" in lowered:
        return "ct"
    if lowered <= {"r", "g", "b", "red", "green", "blue"}:
        return "rgb"
    return "mri"


def _image_files(listed: Path, channels: tuple[str, ...]) -> tuple[Path, ...] | str:
    """The listed file, or its per-channel files (nnU-Net); else why neither is usable."""
    if listed.is_file():
        return (listed,)
    suffix = suffix_of(listed)
    stem = case_id_of(listed)
    per_channel = tuple(listed.with_name(f"{stem}_{k:04d}{suffix}") for k in range(len(channels)))
    present = [p.is_file() for p in per_channel]
    if all(present):
        return per_channel
    if not any(present):
        return f"image missing (expected {listed.name} or {per_channel[0].name})"
    k = present.index(False)
    return f"channel {k} ({channels[k]}) missing (expected {per_channel[k].name})"


def _listed_cases(
    root: Path, entries: list[Any], channels: tuple[str, ...], *, need_labels: bool
) -> tuple[list[Case], list[CaseProblem]]:
    cases, problems = [], []
    for number, entry in enumerate(entries):
        image_text = entry.get("image") if isinstance(entry, dict) else entry
        label_text = entry.get("label") if isinstance(entry, dict) else None
        if not isinstance(image_text, str) or not isinstance(label_text, (str, type(None))):
            reason = f"entry {number} is not a path or {{'image': path, 'label': path}}"
            problems.append(CaseProblem(f"entry {number}", root / "dataset.json", reason))
            continue
        try:
            listed = resolve_inside(root, image_text)
            label = resolve_inside(root, label_text) if label_text else None
        except OutsideRootError as error:
            problems.append(CaseProblem(case_id_of(Path(image_text)), Path(image_text), str(error)))
            continue
        case_id = case_id_of(listed)
        images = _image_files(listed, channels)
        if isinstance(images, str):
            problems.append(CaseProblem(case_id, listed, images))
        elif need_labels and (label is None or not label.is_file()):
            missing = label or listed.parent.parent / "labelsTr" / listed.name
            problems.append(CaseProblem(case_id, missing, "label missing"))
        else:
            cases.append(Case(case_id, images, label if label and label.is_file() else None))
    return cases, problems


def _scanned_cases(
    folder: Path, labels: Path | None, channels: tuple[str, ...], ending: str, need_labels: bool
) -> tuple[list[Case], list[CaseProblem]]:
    """nnU-Net v2: cases from the ``CASE_XXXX<ending>`` files of ``folder``, their labels
    from ``labels`` (None: unlabelled test images)."""
    found: dict[str, dict[int, Path]] = {}
    problems = []
    files = sorted(folder.iterdir()) if folder.is_dir() else []
    for path in files:
        if path.name.startswith(".") or not path.name.endswith(ending):
            continue
        match = _CHANNEL_FILE.match(path.name[: -len(ending)])
        if match is None:
            reason = f"name lacks the channel suffix (expected like CASE_0000{ending})"
            problems.append(CaseProblem(path.name[: -len(ending)], path, reason))
            continue
        found.setdefault(match["case"], {})[int(match["channel"])] = path
    cases = []
    for case_id, by_channel in found.items():
        expected = [folder / f"{case_id}_{k:04d}{ending}" for k in range(len(channels))]
        missing = [p for k, p in enumerate(expected) if k not in by_channel]
        extra = sorted(set(by_channel) - set(range(len(channels))))
        label = None if labels is None else labels / f"{case_id}{ending}"
        if missing:
            problems.append(CaseProblem(case_id, missing[0], "channel file missing"))
        elif extra:
            reason = f"channel {extra[0]} beyond the {len(channels)} in dataset.json"
            problems.append(CaseProblem(case_id, by_channel[extra[0]], reason))
        elif need_labels and label is not None and not label.is_file():
            problems.append(CaseProblem(case_id, label, "label missing"))
        else:
            present = label if label is not None and label.is_file() else None
            cases.append(Case(case_id, tuple(expected), present))
    if labels is not None and labels.is_dir():
        for path in sorted(labels.iterdir()):
            case_id = path.name[: -len(ending)]
            visible = path.name.endswith(ending) and not path.name.startswith(".")
            if visible and case_id not in found:
                problems.append(CaseProblem(case_id, path, "label without an image in imagesTr"))
    return cases, problems


def discover(root: Path, *, need_labels: bool = True) -> DatasetIndex:
    """Read an MSD or nnU-Net root (see the module docstring) into an index.

    Training cases come from ``dataset.json``'s ``training`` list when it has one, else from
    ``imagesTr/``; with ``need_labels=False`` the test cases (``test`` list or ``imagesTs/``)
    are added, without labels. Every path must stay inside ``root``. Raises ``ConfigError``
    when ``dataset.json`` is missing, unreadable, or its labels or channels are unusable.
    """
    root = Path(root)
    description = root / "dataset.json"
    if not description.is_file():
        raise ConfigError(f"{root}: no dataset.json (an MSD or nnU-Net dataset root has one)")
    try:
        data = json.loads(description.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConfigError(f"{description}: unreadable ({error})") from error
    if not isinstance(data, dict) or not isinstance(data.get("labels"), dict):
        raise ConfigError(f"{description}: needs a 'labels' mapping")
    channels = _channel_names(data, str(description))
    scheme = label_scheme(data["labels"], data.get("regions_class_order"), str(description))
    ending = str(data.get("file_ending", ".nii.gz"))
    if isinstance(data.get("training"), list):
        cases, problems = _listed_cases(root, data["training"], channels, need_labels=need_labels)
        if not need_labels:
            test_cases, test_problems = _listed_cases(
                root, data.get("test", []), channels, need_labels=False
            )
            cases, problems = cases + test_cases, problems + test_problems
    else:
        cases, problems = _scanned_cases(
            root / "imagesTr", root / "labelsTr", channels, ending, need_labels
        )
        if not need_labels:
            test_cases, test_problems = _scanned_cases(
                root / "imagesTs", None, channels, ending, False
            )
            cases, problems = cases + test_cases, problems + test_problems
    return DatasetIndex(
        layout="msd",
        root=root,
        cases=cases,
        channels=channels,
        modality=_modality(channels),
        labels=scheme,
        spatial_dims=2 if ending.lower() in BITMAP_SUFFIXES else 3,
        problems=problems,
    )
