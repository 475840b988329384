"""The structures a written label map holds: label value, name and display colour.

Statistics, previews and evaluation overlays name and colour label values through this
module alone; the names and colours are the model's label table (``label_table``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from medseg.datasets.base import LabelScheme


@dataclass(frozen=True)
class Structure:
    """One foreground label value of a written label map: ``value`` on disk, its ``name``
    and its display ``colour`` (``#rrggbb``)."""

    value: int
    name: str
    colour: str


def model_structures(config: Any) -> list[Structure]:
    """The structures of a model's label maps (``ModelConfig``), in value order: its stored
    label table, else its layout's defaults. For BraTS region models these are the painted
    values (1 necrotic core, 2 oedema, 4 or 3 enhancing tumour), not the regions."""
    from medseg.pipelines.label_table import label_table

    return _structures(label_table(config))


def dataset_structures(scheme: LabelScheme, layout: str | None) -> list[Structure]:
    """The structures of a dataset's label files (``scheme``, ``layout``; None: a plain
    folder), named and coloured by the layout's default label table."""
    from medseg.pipelines.label_table import build_label_table

    return _structures(build_label_table(scheme, layout or "folder"))


def _structures(table: Iterable[Any]) -> list[Structure]:
    return [
        Structure(entry.value, entry.name, "#{:02x}{:02x}{:02x}".format(*entry.colour))
        for entry in table
    ]
