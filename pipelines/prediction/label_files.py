"""Label names beside the label maps: an ITK-SNAP label description file, a 3D Slicer
colour table and the short description a NIfTI header holds.

Viewers open a medseg label map as bare values (0/1/2/4); given one of these files they
show names and colours. Both are written atomically, once per output folder.
"""

from __future__ import annotations

from pathlib import Path

from medseg.config import Colour
from medseg.files import write_text_atomic
from medseg.pipelines.label_table import LabelEntry

ITKSNAP_FILE = "labels.itksnap.txt"
SLICER_FILE = "labels.ctbl"
# The NIfTI-1 header's ``descrip`` field holds 80 bytes.
DESCRIPTION_BYTES = 80


def itksnap_text(table: list[LabelEntry]) -> str:
    """An ITK-SNAP label description file: one line per value (index, R, G, B, opacity,
    visibility, mesh visibility, quoted name), the clear label 0 first unless the table
    names value 0 itself."""
    lines = [
        "# ITK-SNAP label descriptions written by medseg predict",
        '# IDX  R  G  B  ALPHA  VISIBLE  MESH  "NAME"',
    ]
    for value, name, (red, green, blue), shown in _rows(table, "Clear Label"):
        lines.append(f'{value} {red} {green} {blue} {shown} {shown} {shown} "{name}"')
    return "\n".join(lines) + "\n"


def slicer_text(table: list[LabelEntry]) -> str:
    """A 3D Slicer colour table (``.ctbl``): ``value name R G B A`` per line, background 0
    first unless the table names value 0; spaces in names become underscores, as Slicer
    writes them."""
    rows = _rows(table, "Background")
    lines = ["# Color table file written by medseg predict", f"# {len(rows)} values"]
    for value, name, (red, green, blue), shown in rows:
        lines.append(f"{value} {'_'.join(name.split())} {red} {green} {blue} {255 * shown}")
    return "\n".join(lines) + "\n"


def _rows(table: list[LabelEntry], background: str) -> list[tuple[int, str, Colour, int]]:
    """(value, name, colour, shown) per entry, after a hidden black ``background`` row
    for value 0 when the table does not name it."""
    rows = [(entry.value, entry.name, entry.colour, 1) for entry in table]
    if all(entry.value != 0 for entry in table):
        rows.insert(0, (0, background, (0, 0, 0), 0))
    return rows


def write_label_files(folder: Path, table: list[LabelEntry]) -> list[Path]:
    """Write ``ITKSNAP_FILE`` and ``SLICER_FILE`` for ``table`` into ``folder``,
    atomically; returns their paths."""
    return [
        write_text_atomic(Path(folder) / ITKSNAP_FILE, itksnap_text(table)),
        write_text_atomic(Path(folder) / SLICER_FILE, slicer_text(table)),
    ]


def nifti_description(table: list[LabelEntry]) -> str:
    """``"1=NCR 2=ED 4=ET"``: each value and its abbreviation in at most
    ``DESCRIPTION_BYTES`` ASCII characters. Abbreviations are cut to the longest common
    length that fits; a table too long even at one letter each ends in ``...``."""
    words = [(entry.value, _ascii_word(entry.abbreviation)) for entry in table]
    longest = max((len(word) for _, word in words), default=0)
    for length in range(longest, 0, -1):
        text = " ".join(f"{value}={word[:length]}" for value, word in words)
        if len(text) <= DESCRIPTION_BYTES:
            return text
    return text[: DESCRIPTION_BYTES - 3] + "..."


def _ascii_word(text: str) -> str:
    return "".join(c if c.isascii() and c.isalnum() else "_" for c in text)
