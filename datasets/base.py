"""What every layout produces: cases, a label scheme, and the dataset index holding both."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


@dataclass(frozen=True)
class Case:
    """One case on disk: an id, one image file per channel, and its label file (or None)."""

    id: str
    image: tuple[Path, ...]
    label: Path | None = None

    def as_dict(self) -> dict[str, Any]:
        """The case in MONAI's datalist convention: ``{"id", "image": [..], "label"}``."""
        return {
            "id": self.id,
            "image": [str(path) for path in self.image],
            "label": None if self.label is None else str(self.label),
        }


@dataclass(frozen=True)
class LabelScheme:
    """How label values on disk map to network output channels, and back.

    ``mode="classes"``: softmax over mutually exclusive classes; ``names[k]`` is output
    channel k, ``values[k]`` holds the one label value it stands for, and channel 0 is the
    background. ``mode="regions"``: sigmoid per (possibly overlapping) region; channel k
    is the union of the label values in ``values[k]`` (BraTS: TC = {1, 4}, WT = {1, 2, 4},
    ET = {4}), and a label map is painted back region by region in ``paint_order`` with
    ``paint[k]`` (outer regions first), background 0 elsewhere.
    """

    mode: Literal["classes", "regions"]
    names: tuple[str, ...]
    values: tuple[tuple[int, ...], ...]
    paint: tuple[int, ...] = ()
    paint_order: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if len(self.names) != len(self.values):
            raise ValueError("a label scheme needs one value set per name")
        if self.mode == "classes" and any(len(v) != 1 for v in self.values):
            raise ValueError("each class stands for exactly one label value")
        if self.mode == "regions" and (
            len(self.paint) != len(self.names)
            or sorted(self.paint_order) != list(range(len(self.names)))
        ):
            raise ValueError("regions need one paint value each and a complete paint order")

    @property
    def out_channels(self) -> int:
        """Network output channels this scheme needs."""
        return len(self.names)

    @property
    def foreground(self) -> dict[str, tuple[int, ...]]:
        """Name -> label values of every scored structure (classes: all but background)."""
        pairs = zip(self.names, self.values, strict=True)
        if self.mode == "classes":
            return {name: values for index, (name, values) in enumerate(pairs) if index > 0}
        return dict(pairs)

    @property
    def allowed_values(self) -> set[int]:
        """Every label value a label file of this scheme may hold (0 included)."""
        return {0} | {value for values in self.values for value in values}

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML-ready data; ``from_dict`` reverses it."""
        data: dict[str, Any] = {
            "mode": self.mode,
            "names": list(self.names),
            "values": [list(v) for v in self.values],
        }
        if self.mode == "regions":
            data |= {"paint": list(self.paint), "paint_order": list(self.paint_order)}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabelScheme:
        """Rebuild a scheme written by ``to_dict``."""
        return cls(
            mode=data["mode"],
            names=tuple(data["names"]),
            values=tuple(tuple(int(x) for x in v) for v in data["values"]),
            paint=tuple(data.get("paint", ())),
            paint_order=tuple(data.get("paint_order", ())),
        )

    @classmethod
    def classes(cls, named_values: dict[str, int]) -> LabelScheme:
        """A softmax scheme from ``{"background": 0, "liver": 1, ...}`` (background first)."""
        return cls("classes", tuple(named_values), tuple((v,) for v in named_values.values()))


@dataclass(frozen=True)
class CaseProblem:
    """Why a case cannot be used: the case id, the offending file and the reason."""

    case_id: str
    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason} (case {self.case_id})"


@dataclass
class DatasetIndex:
    """A folder read in one layout: its usable cases and what they mean.

    ``channels`` names the image channels in order, ``modality`` is one of ``mri``, ``ct``,
    ``em``, ``rgb``, ``spatial_dims`` is 3 for volumes and 2 for images, and ``problems``
    lists every case that was left out with its reason.
    """

    layout: str
    root: Path
    cases: list[Case]
    channels: tuple[str, ...]
    modality: str
    labels: LabelScheme
    spatial_dims: int = 3
    problems: list[CaseProblem] = field(default_factory=list)

    def datalist(self) -> list[dict[str, Any]]:
        """The cases in MONAI's datalist convention (see ``Case.as_dict``)."""
        return [case.as_dict() for case in self.cases]
