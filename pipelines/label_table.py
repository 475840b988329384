"""The label table of a model: what each value of a written label map means and looks like.

One ``LabelEntry`` per foreground value a label map holds (the value ``medseg predict``
writes, not the network channel): its name, a short form, a display colour and the SNOMED
CT segmented-property category and type that DICOM SEG needs. BraTS region models paint
1 (necrotic tumour core), 2 (peritumoural oedema) and 4 (3 for BraTS 2023: enhancing
tumour); LiTS models 1 (liver) and 2 (liver tumour). Other layouts get the label scheme's
names with generic codes and distinct colours. A run config's ``label_table`` section
restyles labels by the model's label name; training stores the resolved table in the model
directory (``labels.table`` of ``config.yaml``), and older model directories without one
get the defaults.
"""

from __future__ import annotations

import colorsys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from medseg.config import Abbreviation, CodedConcept, Colour, DisplayName, LabelStyleConfig
from medseg.datasets.base import LabelScheme
from medseg.errors import ConfigError
from medseg.yaml_input import describe_validation_error


class LabelEntry(BaseModel):
    """One output label: the label map ``value`` (0-255), ``key`` (the label scheme's name
    of the channel that paints it: what a config's ``label_table`` and ``postprocess`` name),
    display ``name``, ``abbreviation``, ``colour`` (RGB 0-255) and the SNOMED CT
    segmented-property ``category`` and ``type``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    value: int
    key: str
    name: DisplayName
    abbreviation: Abbreviation
    colour: Colour
    category: CodedConcept
    type: CodedConcept


ANATOMY = CodedConcept(value="91723000", meaning="Anatomical Structure")
ABNORMAL = CodedConcept(value="49755003", meaning="Morphologically Abnormal Structure")
TISSUE = CodedConcept(value="85756007", meaning="Tissue")
NECROSIS = CodedConcept(value="6574001", meaning="Necrosis")
EDEMA = CodedConcept(value="79654002", meaning="Edema")
NEOPLASM = CodedConcept(value="108369006", meaning="Neoplasm")
LIVER = CodedConcept(value="10200004", meaning="Liver")
LESION = CodedConcept(value="52988006", meaning="Lesion")

# Defaults per (layout, scheme name): display name, abbreviation, colour, category, type.
KNOWN_LABELS: dict[tuple[str, str], tuple[str, str, Colour, CodedConcept, CodedConcept]] = {
    ("brats", "TC"): ("Necrotic tumour core", "NCR", (255, 0, 0), ABNORMAL, NECROSIS),
    ("brats", "WT"): ("Peritumoural oedema", "ED", (0, 200, 0), ABNORMAL, EDEMA),
    ("brats", "ET"): ("Enhancing tumour", "ET", (255, 220, 0), ABNORMAL, NEOPLASM),
    ("lits", "liver"): ("Liver", "liver", (221, 130, 101), ANATOMY, LIVER),
    ("lits", "tumour"): ("Liver tumour", "tumour", (0, 151, 206), ABNORMAL, NEOPLASM),
    ("isic", "lesion"): ("Skin lesion", "lesion", (255, 0, 0), ABNORMAL, LESION),
}

# ITK-SNAP's first label colours: red, green, blue, yellow, cyan, magenta.
PALETTE: tuple[Colour, ...] = (
    (255, 0, 0),
    (0, 255, 0),
    (0, 0, 255),
    (255, 255, 0),
    (0, 255, 255),
    (255, 0, 255),
)


def output_values(scheme: LabelScheme) -> dict[str, int]:
    """Scheme name -> the label map value it is written as, for every scored structure
    (classes: all but the background channel; regions: each region's paint value)."""
    if scheme.mode == "regions":
        return dict(zip(scheme.names, scheme.paint, strict=True))
    return {name: values[0] for name, values in scheme.foreground.items()}


def generic_colour(index: int) -> Colour:
    """The ``index``-th default colour: the palette, then hues spread by the golden ratio."""
    if index < len(PALETTE):
        return PALETTE[index]
    red, green, blue = colorsys.hsv_to_rgb((index * 0.618034) % 1.0, 0.75, 0.95)
    return (round(red * 255), round(green * 255), round(blue * 255))


def default_entry(layout: str, key: str, value: int, index: int) -> LabelEntry:
    """The default entry of label ``key`` (written as ``value``, ``index``-th of its
    scheme) in ``layout``: the layout's own when medseg knows it, else a generic tissue."""
    known = KNOWN_LABELS.get((layout, key))
    if known is not None:
        name, abbreviation, colour, category, type_ = known
    else:
        name, abbreviation = key, key[:16]
        colour, category, type_ = generic_colour(index), TISSUE, ANATOMY
    return LabelEntry(
        value=value,
        key=key,
        name=name,
        abbreviation=abbreviation,
        colour=colour,
        category=category,
        type=type_,
    )


def build_label_table(
    scheme: LabelScheme, layout: str, styles: Mapping[str, LabelStyleConfig] | None = None
) -> list[LabelEntry]:
    """The label table of a model of ``layout`` with label ``scheme``, in output value
    order, each default replaced key by key by ``styles`` (a config's ``label_table``).

    Raises ``ConfigError`` naming ``label_table.<name>`` for a style of a label the scheme
    does not have, and listing the names it has.
    """
    values = output_values(scheme)
    styles = dict(styles or {})
    unknown = sorted(set(styles) - set(values))
    if unknown:
        raise ConfigError(
            f"label_table.{unknown[0]}: unknown label; this model's labels are {', '.join(values)}"
        )
    table = []
    for index, (key, value) in enumerate(values.items()):
        entry = default_entry(layout, key, value, index)
        if key in styles:
            changes = styles[key].model_dump(exclude_none=True)
            entry = LabelEntry.model_validate(entry.model_dump() | changes)
        table.append(entry)
    return sorted(table, key=lambda entry: entry.value)


def parse_label_table(stored: Any, scheme: LabelScheme, source: str) -> list[LabelEntry]:
    """Read a label table stored as data (``labels.table`` of a model's ``config.yaml``).

    Raises ``ConfigError`` naming ``source`` when it is malformed or does not give each of
    the scheme's output values exactly one entry.
    """
    try:
        table = TypeAdapter(list[LabelEntry]).validate_python(stored)
    except ValidationError as error:
        reason = describe_validation_error(error)
        raise ConfigError(f"{source}: labels.table: {reason}") from None
    expected = sorted(output_values(scheme).values())
    if sorted(entry.value for entry in table) != expected:
        found = sorted(entry.value for entry in table)
        raise ConfigError(
            f"{source}: labels.table: values {found} do not match the label map's {expected}"
        )
    return sorted(table, key=lambda entry: entry.value)


def label_table(model: Any) -> list[LabelEntry]:
    """The label table of ``model``: a ``ModelConfig`` or a model directory path.

    The table stored with the model's labels when there is one, else the defaults for its
    layout and label scheme. Raises ``ConfigError`` for an unreadable model or table.
    """
    if isinstance(model, str | Path):
        from medseg.pipelines.model_dir import read_model_config

        model = read_model_config(Path(model))
    stored = model.labels.get("table")
    if stored is None:
        return build_label_table(model.scheme, model.preprocessing.layout)
    return parse_label_table(stored, model.scheme, "config.yaml")


def labels_with_table(
    scheme: LabelScheme, layout: str, styles: Mapping[str, LabelStyleConfig] | None = None
) -> dict[str, Any]:
    """``scheme.to_dict()`` plus ``table``: the resolved label table as plain data, what
    training stores as a model's ``labels``."""
    table = build_label_table(scheme, layout, styles)
    return scheme.to_dict() | {"table": table_as_data(table)}


def table_as_data(table: list[LabelEntry]) -> list[dict[str, Any]]:
    """The table as JSON/YAML-ready data (one mapping per entry)."""
    return [entry.model_dump(mode="json") for entry in table]
