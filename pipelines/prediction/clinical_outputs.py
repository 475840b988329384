"""What ``medseg predict`` writes beside each label map for the people who read it: the
case's rows of ``statistics.csv`` and, with ``--preview``, ``previews/<case>.png``."""

from __future__ import annotations

import csv
import logging
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medseg.datasets.base import Case
from medseg.pipelines.planar import has_pixel_size
from medseg.pipelines.statistics import label_statistics, largest_structure_centre, printable
from medseg.pipelines.structures import Structure, model_structures

logger = logging.getLogger(__name__)

PREVIEW_FOLDER = "previews"


@dataclass(frozen=True)
class CaseDescriber:
    """Describes predicted cases of one model: ``structures`` (the written label values),
    ``window`` (grey range of previews; None: percentiles) and ``preview_dir`` (None: no
    previews)."""

    structures: tuple[Structure, ...]
    window: tuple[float, float] | None
    preview_dir: Path | None

    @classmethod
    def for_model(cls, config: Any, output_dir: Path, preview: bool) -> CaseDescriber:
        """The describer for a model's ``ModelConfig``: its label table's structures and,
        for CT, its Hounsfield window (the window its preprocessing clips to, else a
        soft-tissue window)."""
        from medseg.pipelines.previews import SOFT_TISSUE_WINDOW

        pre = config.preprocessing
        window = None
        if pre.modality == "ct":
            stats = pre.intensity
            window = SOFT_TISSUE_WINDOW
            if {"window_low", "window_high"} <= set(stats):
                window = (stats["window_low"], stats["window_high"])
        folder = Path(output_dir) / PREVIEW_FOLDER if preview else None
        return cls(tuple(model_structures(config)), window, folder)

    def describe(self, case: Case, labels: np.ndarray, affine: np.ndarray) -> list[dict]:
        """Statistics rows of ``case`` (``label_statistics`` plus ``case``) from its label map
        (``labels``, ``affine``: the written output's grid); draws its preview when asked.
        An image that cannot be read again leaves the intensity fields empty (a warning)."""
        image = _first_image(case, labels.shape)
        channel = None if image is None else image if image.ndim == labels.ndim else image[..., 0]
        rows = label_statistics(
            labels, self.structures, _spacing(case, affine, labels.ndim), channel
        )
        if self.preview_dir is not None:
            from medseg.pipelines.previews import draw_preview

            self.preview_dir.mkdir(exist_ok=True)
            draw_preview(
                self.preview_dir / f"{case.id}.png",
                image,
                affine,
                [("prediction", labels)],
                self.structures,
                centre=largest_structure_centre(rows),
                window=self.window,
                title=printable(case.id),
            )
        return [{"case": case.id, **row} for row in rows]

    def catch_up(self, entries: Sequence[Any], cases: Mapping[str, Case], statistics: Path) -> None:
        """Describe the cases an earlier run segmented (``entries`` of the predict report
        that were skipped for it) whose rows the ``statistics`` file lacks, or whose preview
        is asked for and missing, from their label maps; their rows go into the entries.
        A case that cannot be described is logged; its label map stands."""
        known = {row.get("case") for row in _read_rows(statistics)}
        for entry in entries:
            if entry.status != "skipped" or entry.error is not None or entry.output is None:
                continue
            case = cases[entry.case]
            missing_preview = (
                self.preview_dir is not None and not (self.preview_dir / f"{case.id}.png").exists()
            )
            if printable(case.id) in known and not missing_preview:
                continue
            from medseg.datasets.image_io import read_volume

            try:
                written = read_volume(Path(entry.output))
                entry.statistics = self.describe(case, written.array, written.affine)
            except Exception as error:  # the finished label map stays as it is
                logger.warning("%s: cannot describe the earlier output (%s)", case.id, error)


def _spacing(case: Case, affine: np.ndarray, ndim: int) -> tuple[float, ...] | None:
    """Voxel size (mm) of the output grid; None for a photo, whose pixels have no size."""
    if ndim == 2 and not has_pixel_size(case.image[0]):
        return None
    from nibabel.affines import voxel_sizes

    return tuple(float(size) for size in voxel_sizes(affine)[:ndim])


def _first_image(case: Case, shape: tuple[int, ...]) -> np.ndarray | None:
    """The case's first image file as read (a colour picture keeps its 3 channels, a 4D
    file its channel axis last), or None with a warning when it cannot be read again or
    its grid is not ``shape``."""
    from medseg.datasets.image_io import read_volume

    path = case.image[0]
    try:
        array = read_volume(path).array
    except Exception as error:  # the statistics and picture go on without intensities
        logger.warning("%s: statistics without intensities (%s)", path, error)
        return None
    if array.shape[: len(shape)] != tuple(shape) or array.ndim > len(shape) + 1:
        logger.warning("%s: image grid %s differs from the output's %s", path, array.shape, shape)
        return None
    return array


def merged_rows(
    path: Path, fresh: Mapping[str, Sequence[Mapping[str, Any]]]
) -> list[Mapping[str, Any]]:
    """The rows of the statistics file at ``path`` (when it exists and reads) of every case
    not in ``fresh``, and ``fresh``'s rows, sorted by case id (each case's rows in label
    order): a rerun that skips finished cases keeps their rows, a case segmented again gets
    new ones."""
    redone = {printable(case) for case in fresh}
    kept = [row for row in _read_rows(path) if row.get("case") not in redone]
    rows = kept + [row for rows in fresh.values() for row in rows]
    return sorted(rows, key=lambda row: printable(str(row["case"])))


def _read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of the statistics file at ``path``; none when it is missing or unreadable."""
    try:
        # A pipe under its name would block the reader; the new file replaces it.
        if not stat.S_ISREG(Path(path).stat().st_mode):
            return []
        with Path(path).open(newline="", encoding="utf-8") as stream:
            return list(csv.DictReader(stream))
    except (OSError, UnicodeDecodeError, csv.Error):
        return []
