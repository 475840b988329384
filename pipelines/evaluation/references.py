"""Find the reference labels ``medseg evaluate`` scores against, and what they mean."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medseg.datasets import LAYOUT_NAMES, discover
from medseg.datasets.base import LabelScheme
from medseg.datasets.image_io import IMAGE_SUFFIXES
from medseg.errors import ConfigError
from medseg.pipelines.prediction.cases import strip_suffix


@dataclass
class References:
    """Reference label file and (when known) image file per case id, the label scheme, and
    (when known) the images' modality (``ct``, ``mri``, ...) and the dataset's layout."""

    labels: dict[str, Path]
    scheme: LabelScheme
    images: dict[str, Path] | None = None
    modality: str | None = None
    layout: str | None = None


def parse_labels(text: str) -> LabelScheme:
    """``"liver=1,tumour=2"`` -> a classes scheme with background 0 and those structures."""
    named = {"background": 0}
    for item in text.split(","):
        name, separator, value = item.partition("=")
        if not separator or not value.strip().isdigit() or not name.strip():
            raise ConfigError(
                f"--labels {text!r}: expected name=value pairs, e.g. liver=1,tumour=2"
            )
        named[name.strip()] = int(value)
    return LabelScheme.classes(named)


def find_references(ref_dir: Path, *, layout: str | None, labels: str | None) -> References:
    """Read ``ref_dir`` as a dataset in ``layout`` (or the first layout that fits), or, with
    ``labels``, as a plain folder of ``<case_id>`` label files.

    Raises ``ConfigError`` when the folder is missing or neither reading applies.
    """
    ref_dir = Path(ref_dir)
    if not ref_dir.is_dir():
        raise ConfigError(f"{ref_dir}: reference folder not found")
    if labels is not None:
        files = [p for p in sorted(ref_dir.iterdir()) if p.name.endswith(IMAGE_SUFFIXES)]
        if not files:
            raise ConfigError(f"{ref_dir}: no label files ({', '.join(IMAGE_SUFFIXES)})")
        return References({strip_suffix(p): p for p in files}, parse_labels(labels))
    candidates = [layout] if layout else [name for name in LAYOUT_NAMES if name != "folder"]
    for name in candidates:
        try:
            index = discover(name, ref_dir, need_labels=True)
        except ConfigError:
            if layout:
                raise
            continue
        if index.cases:
            return References(
                {c.id: c.label for c in index.cases if c.label is not None},
                index.labels,
                {c.id: c.image[0] for c in index.cases},
                index.modality,
                index.layout,
            )
    raise ConfigError(
        f"{ref_dir}: not a dataset in a known layout; give --layout, or --labels name=value,... "
        "for a plain folder of label files"
    )
