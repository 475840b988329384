"""BraTS 2023 lesion-wise Dice and HD95 on hand-built masks whose answer is worked out here."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.pipelines.evaluation.lesionwise import MISSED_HD95, case_lesionwise, lesionwise_scores
from medseg.pipelines.evaluation.metrics import structure_metrics


def _cube(mask: np.ndarray, corner: tuple[int, int, int], size: int) -> None:
    x, y, z = corner
    mask[x : x + size, y : y + size, z : z + size] = True


def test_matched_missed_merged_small_and_false_positive_lesions():
    reference = np.zeros((60, 60, 30), dtype=bool)
    prediction = np.zeros_like(reference)
    _cube(reference, (2, 2, 2), 10)  # A: 1000 voxels, half of it predicted
    prediction[2:12, 2:12, 2:7] = True
    _cube(reference, (30, 2, 2), 6)  # B: 216 voxels, missed
    _cube(reference, (2, 30, 2), 5)  # C1 and C2, 4 voxels apart: one lesion after dilation
    _cube(reference, (2, 39, 2), 5)
    prediction[2:7, 30:35, 2:7] = True  # C1 exactly; C2 unpredicted
    _cube(reference, (30, 30, 20), 3)  # D: 27 voxels, too small to score, predicted
    _cube(prediction, (30, 30, 20), 2)
    _cube(prediction, (50, 50, 20), 4)  # E: far from every lesion, a false positive

    scores = lesionwise_scores(prediction, reference, (1.0, 1.0, 1.0))

    lesion_a, lesion_c, predicted_c = (np.zeros_like(reference) for _ in range(3))
    _cube(lesion_a, (2, 2, 2), 10)
    _cube(lesion_c, (2, 30, 2), 5)
    _cube(lesion_c, (2, 39, 2), 5)
    _cube(predicted_c, (2, 30, 2), 5)
    half = structure_metrics(prediction & lesion_a, lesion_a, (1, 1, 1))
    c = structure_metrics(predicted_c, lesion_c, (1, 1, 1))
    assert half["dice"] == pytest.approx(2 * 500 / 1500)
    assert c["dice"] == pytest.approx(2 * 125 / (125 + 250))
    # Scored: A, B, C (D is too small); one false positive, E. D's prediction is no FP.
    assert scores["lesions"] == 3
    assert scores["detected"] == 2
    assert scores["missed"] == 1
    assert scores["false_positives"] == 1
    assert scores["dice"] == pytest.approx((half["dice"] + 0.0 + c["dice"] + 0.0) / 4)
    expected_hd95 = (half["hd95"] + MISSED_HD95 + c["hd95"] + MISSED_HD95) / 4
    assert scores["hd95"] == pytest.approx(expected_hd95)


def test_empty_masks_score_one_and_a_lone_false_positive_zero():
    empty = np.zeros((20, 20, 20), dtype=bool)
    assert lesionwise_scores(empty, empty, (1, 1, 1)) == {
        "lesions": 0,
        "detected": 0,
        "missed": 0,
        "false_positives": 0,
        "dice": 1.0,
        "hd95": 0.0,
    }
    spot = empty.copy()
    spot[5:8, 5:8, 5:8] = True
    alone = lesionwise_scores(spot, empty, (1, 1, 1))
    assert (alone["false_positives"], alone["dice"], alone["hd95"]) == (1, 0.0, MISSED_HD95)


def test_structures_are_unions_of_label_values_and_2d_works():
    reference = np.zeros((40, 40), dtype=np.uint8)
    reference[5:15, 5:15] = 1
    reference[8:12, 8:12] = 4
    prediction = reference.copy()
    prediction[30:38, 30:38] = 2  # a second lesion of the whole tumour only
    rows = case_lesionwise(prediction, reference, (1.0, 1.0), {"TC": (1, 4), "WT": (1, 2, 4)})
    by_label = {row["label"]: row for row in rows}
    assert by_label["TC"]["dice"] == 1.0 and by_label["TC"]["false_positives"] == 0
    assert by_label["WT"]["false_positives"] == 1
    assert by_label["WT"]["dice"] == pytest.approx(0.5)
    assert by_label["WT"]["hd95"] == pytest.approx(MISSED_HD95 / 2)
