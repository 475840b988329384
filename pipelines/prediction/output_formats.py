"""Which files ``medseg predict`` writes for a case: a label map, a DICOM SEG, or both.

``--output-format nifti`` writes the label map (NIfTI, or MetaImage/NRRD for such inputs),
``dicom-seg`` a DICOM SEG of the source series, ``both`` the two. Left unset, a DICOM series
gets both and any other input the label map alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medseg.datasets.base import Case
from medseg.errors import CaseError, ConfigError
from medseg.pipelines.label_table import LabelEntry
from medseg.pipelines.prediction.label_files import nifti_description

logger = logging.getLogger(__name__)

OUTPUT_FORMATS = ("nifti", "dicom-seg", "both")


def is_dicom_series(case: Case) -> bool:
    """Whether ``case`` is read from a DICOM series folder (its first channel)."""
    return case.image[0].is_dir()


@dataclass(frozen=True)
class OutputPlan:
    """What to write per case: the requested ``output_format`` (None: by input), the
    model's label ``table``, the NIfTI ``description`` made from it, the ``algorithm`` name
    a SEG carries, and whether highdicom is there to write SEGs (``seg_ready``)."""

    output_format: str | None
    table: list[LabelEntry]
    description: str
    algorithm: str
    seg_ready: bool

    def for_case(self, case: Case) -> tuple[bool, bool]:
        """``(label_map, dicom_seg)``: which outputs ``case`` gets. Raises ``CaseError``
        when a SEG is asked for an input that is not a DICOM series."""
        dicom = is_dicom_series(case)
        if self.output_format is None:
            return True, dicom and self.seg_ready
        if self.output_format != "nifti" and not dicom:
            raise CaseError(
                f"{case.image[0]}: --output-format {self.output_format} needs a DICOM series "
                "folder as input (a SEG references its source images)"
            )
        return self.output_format != "dicom-seg", self.output_format != "nifti"


def require_output_format(output_format: str | None) -> None:
    """Raise ``ConfigError`` for an unknown format, or a SEG asked for without highdicom
    (the ``dicom`` extra)."""
    from medseg.pipelines.prediction.dicom_seg import highdicom_available

    if output_format is not None and output_format not in OUTPUT_FORMATS:
        raise ConfigError(
            f"--output-format {output_format}: unknown (use {', '.join(OUTPUT_FORMATS)})"
        )
    if output_format in ("dicom-seg", "both") and not highdicom_available():
        raise ConfigError(
            f"--output-format {output_format} needs highdicom: pip install 'medseg[dicom]'"
        )


def plan_outputs(
    output_format: str | None, table: list[LabelEntry], config: Any, cases: list[Case]
) -> OutputPlan:
    """The ``OutputPlan`` for a prediction with model ``config`` over ``cases``, for a
    format ``require_output_format`` accepted. Without highdicom and without a format,
    DICOM cases get label maps only, with one warning."""
    from medseg.pipelines.prediction.dicom_seg import highdicom_available

    ready = highdicom_available()
    if not ready and output_format is None and any(is_dicom_series(case) for case in cases):
        logger.warning("DICOM input: writing label maps only (DICOM SEG needs medseg[dicom])")
    algorithm = f"medseg {config.network.name}"
    return OutputPlan(output_format, table, nifti_description(table), algorithm, ready)


def seg_finished(path: Path) -> bool:
    """Whether a complete DICOM SEG is at ``path``: a regular file that pydicom reads as a
    Segmentation (SEGs are renamed into place whole, so a readable one is complete)."""
    import stat

    try:
        if not stat.S_ISREG(path.lstat().st_mode):
            return False
        import pydicom

        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"])
    except Exception:  # missing, foreign or unreadable: make it again
        return False
    return header.get("Modality") == "SEG"
