"""ISIC 2018 skin lesion segmentation: ``ISIC_XXXXXXX.jpg`` + ``ISIC_XXXXXXX_segmentation.png``.

The release puts dermoscopy images (RGB JPEG, sizes from 576x542 to 6688x4439) and their
masks (8-bit PNG, 255 on the lesion, 0 elsewhere) in separate folders
(``ISIC2018_Task1-2_Training_Input/``, ``ISIC2018_Task1_Training_GroundTruth/``); both are
found anywhere below the root and matched by id. Files of other tasks that share the
folders (``_superpixels.png``, ``LICENSE.txt``) are ignored. Cases are 2D with three
channels (red, green, blue).
"""

from __future__ import annotations

import re
from pathlib import Path

from medseg.datasets.base import Case, CaseProblem, DatasetIndex, LabelScheme
from medseg.errors import ConfigError

LABELS = LabelScheme.classes({"background": 0, "lesion": 255})
CHANNELS = ("red", "green", "blue")
_IMAGE = re.compile(r"^(ISIC_\d{7})\.(jpg|jpeg|png)$", re.IGNORECASE)
_MASK = re.compile(r"^(ISIC_\d{7})_segmentation\.png$", re.IGNORECASE)


def _visible(path: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def discover(root: Path, *, need_labels: bool = True) -> DatasetIndex:
    """Read an ISIC root into an index of 2D RGB cases with lesion masks.

    An image without its mask is a problem when ``need_labels``; a mask without its image
    always is. The same id found in two folders gives two cases, which ``validate``
    reports. Raises ``ConfigError`` when ``root`` is not a folder or holds no ISIC image.
    """
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"{root}: folder not found")
    images: list[tuple[str, Path]] = []
    masks: dict[str, Path] = {}
    for path in sorted(root.rglob("ISIC_*")):
        if not path.is_file() or not _visible(path, root):
            continue
        if image := _IMAGE.match(path.name):
            images.append((image.group(1), path))
        elif mask := _MASK.match(path.name):
            masks.setdefault(mask.group(1), path)
    if not images and not masks:
        raise ConfigError(f"{root}: no ISIC images (expected ISIC_0000000.jpg)")
    cases: list[Case] = []
    problems: list[CaseProblem] = []
    for case_id, image_path in images:
        mask_path = masks.get(case_id)
        if mask_path is None and need_labels:
            expected = f"{case_id}_segmentation.png"
            problems.append(CaseProblem(case_id, image_path, f"mask missing (expected {expected})"))
        else:
            cases.append(Case(case_id, (image_path,), mask_path))
    for case_id in sorted(set(masks) - {case_id for case_id, _ in images}):
        problems.append(
            CaseProblem(case_id, masks[case_id], f"image missing (expected {case_id}.jpg)")
        )
    return DatasetIndex(
        layout="isic",
        root=root,
        cases=cases,
        channels=CHANNELS,
        modality="rgb",
        labels=LABELS,
        spatial_dims=2,
        problems=problems,
    )
