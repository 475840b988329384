"""Any dataset as ``images/`` + ``labels/`` with matching names, in any format medseg reads.

``images/case_7.nii.gz`` pairs with ``labels/case_7.nii.gz`` (or ``labels/case_7.png`` for
``images/case_7.jpg``: names match without their suffix). Files may be NIfTI, MetaImage,
NRRD, TIFF, PNG/JPEG/BMP or DICOM; a folder of DICOM files inside ``images/`` is one case.
Nothing on disk names the labels, so they come from the config; without it each value
found in the label files becomes a class ``label_<value>``.
"""

from __future__ import annotations

from pathlib import Path

from medseg.datasets.base import Case, CaseProblem, DatasetIndex, LabelScheme
from medseg.datasets.datalist import case_id_of
from medseg.datasets.headers import UnusableImageError, inspect_image, is_image, label_values
from medseg.errors import ConfigError

MODALITIES = ("mri", "ct", "em", "rgb")


def _entries(folder: Path) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if is_image(path):
            found.setdefault(path.name if path.is_dir() else case_id_of(path), []).append(path)
    return found


def scheme_from_labels(labels: dict[str, int], where: str) -> LabelScheme:
    """Classes from the config's ``{"liver": 1, "tumour": 2}``, in the order given (the first
    is the background channel); ``background: 0`` is put first when no name has value 0.
    Raises ``ConfigError`` for negative or repeated values."""
    values = list(labels.values())
    if any(not isinstance(v, int) or v < 0 for v in values) or len(set(values)) != len(values):
        raise ConfigError(f"{where}: labels must map names to distinct values >= 0, got {labels}")
    named = dict(labels) if 0 in values else {"background": 0} | labels
    return LabelScheme.classes(named)


def _scheme_from_files(cases: list[Case], root: Path) -> LabelScheme:
    found: set[int] = set()
    for case in cases:
        if case.label is None:
            continue
        try:
            values = label_values(case.label)
        except UnusableImageError:
            continue  # validate names the file; the other labels still give the names
        found |= {int(v) for v in values if float(v).is_integer() and v >= 0}
    if not any(case.label for case in cases):
        raise ConfigError(
            f"{root}: label names unknown; give them in the config "
            "(data.labels: {liver: 1, tumour: 2}) or put label files in labels/"
        )
    return LabelScheme.classes({"background": 0} | {f"label_{v}": v for v in sorted(found - {0})})


def _image_description(cases: list[Case], modality: str | None) -> tuple[tuple[str, ...], str, int]:
    """Channel names, modality and spatial dims, from the first readable image."""
    for case in cases:
        try:
            header = inspect_image(case.image[0])
        except UnusableImageError:
            continue
        colour = len(header.shape) == 2 and header.channels == 3
        if colour:
            channels: tuple[str, ...] = ("red", "green", "blue")
        elif header.channels == 1:
            channels = ("image",)
        else:
            channels = tuple(f"channel_{k}" for k in range(header.channels))
        return channels, modality or ("rgb" if colour else "mri"), len(header.shape)
    return ("image",), modality or "mri", 3


def discover(
    root: Path,
    *,
    need_labels: bool = True,
    labels: dict[str, int] | None = None,
    modality: str | None = None,
) -> DatasetIndex:
    """Read ``root/images`` (and ``root/labels``) into an index of single-file cases.

    ``labels`` names the label values (the config's); None reads every label file once
    and names each value found ``label_<value>``. ``modality`` (one of ``MODALITIES``)
    defaults to ``rgb`` for colour 2D images and ``mri`` otherwise (no normalisation
    beyond a z-score). Channels and spatial dims come from the first readable image. A
    label without an image is a problem; so is, with ``need_labels``, an image without a
    label. Raises ``ConfigError`` when ``images/`` (or, with ``need_labels``, ``labels/``)
    is missing or empty, or the labels cannot be named.
    """
    root = Path(root)
    if modality is not None and modality not in MODALITIES:
        raise ConfigError(f"modality {modality!r} unknown; one of {', '.join(MODALITIES)}")
    images_dir, labels_dir = root / "images", root / "labels"
    if not images_dir.is_dir():
        raise ConfigError(f"{root}: no images/ folder (the folder layout is images/ + labels/)")
    if need_labels and not labels_dir.is_dir():
        raise ConfigError(f"{root}: no labels/ folder")
    images = _entries(images_dir)
    if not images:
        raise ConfigError(f"{images_dir}: no image files")
    label_files = _entries(labels_dir) if labels_dir.is_dir() else {}
    cases: list[Case] = []
    problems: list[CaseProblem] = []
    for case_id, paths in images.items():
        label = label_files.get(case_id, [None])[0]
        if label is None and need_labels:
            reason = f"label missing (expected labels/{paths[0].name})"
            problems.append(CaseProblem(case_id, paths[0], reason))
            continue
        cases.extend(Case(case_id, (path,), label) for path in paths)
    for case_id in sorted(set(label_files) - set(images)):
        problems.append(CaseProblem(case_id, label_files[case_id][0], "label without an image"))
    scheme = scheme_from_labels(labels, str(root)) if labels else _scheme_from_files(cases, root)
    channels, chosen_modality, spatial_dims = _image_description(cases, modality)
    return DatasetIndex(
        layout="folder",
        root=root,
        cases=cases,
        channels=channels,
        modality=chosen_modality,
        labels=scheme,
        spatial_dims=spatial_dims,
        problems=problems,
    )
