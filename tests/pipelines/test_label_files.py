"""The NIfTI description of a label table fits its 80 bytes, however many labels."""

from __future__ import annotations

from medseg.datasets.brats import RELEASES
from medseg.datasets.folder import scheme_from_labels
from medseg.pipelines.label_table import build_label_table
from medseg.pipelines.prediction.label_files import nifti_description


def test_brats_description_names_each_value() -> None:
    assert nifti_description(build_label_table(RELEASES[0].labels(), "brats")) == "1=NCR 2=ED 4=ET"


def test_long_names_are_cut_to_fit_80_ascii_bytes() -> None:
    names = {"background": 0} | {f"vertebra_{k}_é": k for k in range(1, 9)}
    text = nifti_description(build_label_table(scheme_from_labels(names, "labels"), "folder"))
    assert len(text) <= 80 and text.isascii()
    assert text.startswith("1=vertebr") and " 8=vertebr" in text


def test_too_many_labels_end_in_an_ellipsis() -> None:
    names = {"background": 0} | {f"s{k}": k for k in range(1, 60)}
    text = nifti_description(build_label_table(scheme_from_labels(names, "labels"), "folder"))
    assert len(text) == 80 and text.endswith("...") and text.startswith("1=s 2=s")
