"""The structures a written label map holds: label value, name and display colour.

Statistics, previews and evaluation overlays name and colour label values through
``written_structures`` alone, so the label table of a model (names, colours) is read in one
place.
"""

from __future__ import annotations

from dataclasses import dataclass

from medseg.datasets.base import LabelScheme

# Matplotlib's "tab10" colours: distinct on grey and on skin, and for the common
# red-green colour blindness the first four stay apart.
COLOURS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)


@dataclass(frozen=True)
class Structure:
    """One foreground label value of a written label map: ``value`` on disk, its ``name``
    and its display ``colour`` (``#rrggbb``)."""

    value: int
    name: str
    colour: str


def written_structures(scheme: LabelScheme) -> list[Structure]:
    """The foreground values a label map of ``scheme`` holds on disk, in the scheme's order.

    Classes: every class but the background, named as the scheme names it. Regions (BraTS
    TC/WT/ET): one entry per painted value in paint order, since a written label map holds
    painted values, not overlapping regions; each is named after the region that paints it
    minus the next one painted over it (BraTS 2021: 2 ``WT-TC`` the oedema, 1 ``TC-ET`` the
    necrotic core, 4 ``ET``).
    """
    if scheme.mode == "classes":
        pairs = [(values[0], name) for name, values in scheme.foreground.items()]
    else:
        pairs = []
        for position, index in enumerate(scheme.paint_order):
            painted_over = [scheme.names[k] for k in scheme.paint_order[position + 1 :]]
            name = "-".join([scheme.names[index], *painted_over[:1]])
            pairs.append((scheme.paint[index], name))
    return [
        Structure(value, name, COLOURS[number % len(COLOURS)])
        for number, (value, name) in enumerate(pairs)
    ]
