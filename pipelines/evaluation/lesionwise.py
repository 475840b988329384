"""Lesion-wise Dice and HD95 in the manner of the BraTS 2023 challenge (``lesionwise.csv``).

Per structure (BraTS: TC, WT, ET) and case, written from the challenge's description:

1. Reference lesions: the reference mask is dilated ``DILATION_STEPS`` times with the
   18-neighbour cross (``generate_binary_structure(3, 2)``; 8 neighbours in 2D) and its
   connected components (26 neighbours; 8 in 2D) are found; each lesion is the reference
   voxels inside one of them, so lesions closer than the dilation count as one.
2. Predicted lesions: the connected components (26 neighbours) of the prediction.
3. Each reference lesion, dilated the same way, picks every predicted lesion it touches;
   its Dice and HD95 (``metrics.structure_metrics``, mm) are taken against the union of
   those. With none it is a false negative: Dice 0, HD95 ``MISSED_HD95`` (374 mm).
4. Reference lesions of at most ``SMALL_LESION_VOXELS`` voxels are left out of the score
   (a prediction touching one is neither scored nor a false positive).
5. Predicted lesions touching no dilated reference lesion are false positives: Dice 0,
   HD95 374.
6. The case's lesion-wise Dice is the sum of the scored lesions' Dice over (scored lesions
   + false positives); HD95 likewise. With neither it is 1 and 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medseg.pipelines.evaluation.metrics import bounding_box, structure_mask, structure_metrics

DILATION_STEPS = 3
SMALL_LESION_VOXELS = 50
MISSED_HD95 = 374.0
RULE = (
    "BraTS 2023: reference lesions are its connected components after a 3-step dilation "
    "(merging lesions that close); predicted components touching a dilated lesion are its "
    "match; lesions <= 50 voxels left out; unmatched predictions are false positives "
    "(Dice 0, HD95 374)"
)
COLUMNS = ("case", "label", "lesions", "detected", "missed", "false_positives", "dice", "hd95")
"""Columns of ``lesionwise.csv``: per case and structure, the scored reference lesions,
how many were detected and missed, the false positives, lesion-wise Dice and HD95 (mm)."""


def lesionwise_scores(
    prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float]
) -> dict[str, Any]:
    """Lesion-wise scores of one structure: ``prediction`` and ``reference`` are boolean
    masks of one shape (2D or 3D), ``spacing`` the voxel size in mm per axis.

    Returns ``lesions``, ``detected``, ``missed``, ``false_positives`` (ints), ``dice`` and
    ``hd95`` (floats; see the module docstring).
    """
    from scipy import ndimage
    from skimage.measure import label

    prediction = np.asarray(prediction, dtype=bool)
    reference = np.asarray(reference, dtype=bool)
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from {reference.shape}")
    ndim = reference.ndim
    cross = ndimage.generate_binary_structure(ndim, 2)
    # Everything happens inside the box of both masks grown by the dilation: nothing outside
    # it can be a lesion, touch one or be touched.
    tight = bounding_box(prediction | reference)
    if tight is None:
        return _scores(0, 0, 0, [], [])
    box = tuple(
        slice(max(0, s.start - DILATION_STEPS), min(size, s.stop + DILATION_STEPS))
        for s, size in zip(tight, reference.shape, strict=True)
    )
    prediction, reference = prediction[box], reference[box]
    predicted = label(prediction, connectivity=ndim)
    grown = ndimage.binary_dilation(reference, structure=cross, iterations=DILATION_STEPS)
    groups = label(grown, connectivity=ndim)
    touched: set[int] = set()
    dice, hd95, detected = [], [], 0
    # A lesion dilated lies inside its own grown group, so each is handled in its group's box.
    for group, group_box in enumerate(ndimage.find_objects(groups), start=1):
        lesion = np.zeros_like(reference)
        lesion[group_box] = reference[group_box] & (groups[group_box] == group)
        reach = ndimage.binary_dilation(
            lesion[group_box], structure=cross, iterations=DILATION_STEPS
        )
        hits = np.unique(predicted[group_box][reach & prediction[group_box]])
        touched.update(int(hit) for hit in hits)
        if np.count_nonzero(lesion) <= SMALL_LESION_VOXELS:
            continue
        if hits.size == 0:
            dice.append(0.0)
            hd95.append(MISSED_HD95)
            continue
        detected += 1
        matched = np.isin(predicted, hits)
        row = structure_metrics(matched, lesion, spacing)
        dice.append(float(row["dice"]))
        hd95.append(float(row["hd95"]))
    false_positives = len(set(range(1, int(predicted.max()) + 1)) - touched)
    return _scores(len(dice), detected, false_positives, dice, hd95)


def _scores(
    lesions: int, detected: int, false_positives: int, dice: list[float], hd95: list[float]
) -> dict[str, Any]:
    counted = lesions + false_positives
    return {
        "lesions": lesions,
        "detected": detected,
        "missed": lesions - detected,
        "false_positives": false_positives,
        "dice": 1.0 if counted == 0 else sum(dice) / counted,
        "hd95": 0.0 if counted == 0 else (sum(hd95) + MISSED_HD95 * false_positives) / counted,
    }


def case_lesionwise(
    prediction: np.ndarray,
    reference: np.ndarray,
    spacing: Sequence[float],
    structures: Mapping[str, Sequence[int]],
) -> list[dict[str, Any]]:
    """``lesionwise_scores`` of every structure (name -> label values, a union as in
    ``case_metrics``) of two integer label maps; one dict per structure with ``label``."""
    return [
        {
            "label": name,
            **lesionwise_scores(
                structure_mask(prediction, values), structure_mask(reference, values), spacing
            ),
        }
        for name, values in structures.items()
    ]


def summarize_lesionwise(rows: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> dict:
    """Per label: the mean lesion-wise Dice and HD95 over cases and the lesion counts summed
    (``{label: {"dice", "hd95", "cases", "lesions", "detected", "missed",
    "false_positives"}}``; means None over no cases)."""
    summary = {}
    for name in labels:
        own = [row for row in rows if row["label"] == name]
        entry: dict[str, Any] = {
            metric: (float(np.mean([row[metric] for row in own])) if own else None)
            for metric in ("dice", "hd95")
        }
        entry["cases"] = len(own)
        for count in ("lesions", "detected", "missed", "false_positives"):
            entry[count] = int(sum(row[count] for row in own))
        summary[name] = entry
    return summary
