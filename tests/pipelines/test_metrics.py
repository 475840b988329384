"""Metrics against independent implementations, hand-computed geometry, the empty-mask rules
and the challenge views (BraTS regions, LiTS per-case and global Dice)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import ndimage

from medseg.datasets.base import LabelScheme
from medseg.errors import ConfigError
from medseg.pipelines.evaluation.metrics import (
    ROW_FIELDS,
    EmptyRule,
    case_metrics,
    structure_metrics,
    summarize,
)

medpy_binary = pytest.importorskip("medpy.metric.binary")


def random_pair(shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Blobby random reference (several components, touching the border) and a prediction
    that differs from it by smaller random blobs."""
    rng = np.random.default_rng(seed)
    ref = ndimage.gaussian_filter(rng.normal(size=shape), 2.5) > 0.02
    noise = ndimage.gaussian_filter(rng.normal(size=shape), 1.5) > 0.12
    return ref ^ noise, ref


@pytest.mark.parametrize(
    ("shape", "spacing", "seed"),
    [
        ((33, 34, 35), (0.7, 1.1, 2.5), 0),
        ((40, 31, 17), (2.5, 0.7, 0.9), 1),
        ((30, 30, 30), (1.0, 1.0, 3.0), 2),
        ((64, 57), (0.6, 1.7), 3),
    ],
)
def test_agrees_with_medpy_and_monai(shape, spacing, seed):
    torch = pytest.importorskip("torch")
    monai_metrics = pytest.importorskip("monai.metrics")
    pred, ref = random_pair(shape, seed)
    row = structure_metrics(pred, ref, spacing, tolerance_mm=1.5)
    assert row["dice"] == pytest.approx(medpy_binary.dc(pred, ref), abs=1e-6)
    assert row["iou"] == pytest.approx(medpy_binary.jc(pred, ref), abs=1e-6)
    # Both libraries take the same voxel surfaces and exact distances, so the values agree to
    # float32 rounding (MONAI's), far inside the half-voxel bound.
    assert row["assd"] == pytest.approx(medpy_binary.assd(pred, ref, spacing), abs=1e-4)

    def batch(mask):
        return torch.from_numpy(mask)[None, None]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd95 = monai_metrics.compute_hausdorff_distance(
            batch(pred), batch(ref), include_background=True, percentile=95, spacing=spacing
        )
        assd = monai_metrics.compute_average_surface_distance(
            batch(pred), batch(ref), include_background=True, symmetric=True, spacing=spacing
        )
        nsd = monai_metrics.compute_surface_dice(
            batch(pred), batch(ref), [1.5], include_background=True, spacing=spacing
        )
    assert row["hd95"] == pytest.approx(float(hd95), abs=1e-4)
    assert row["assd"] == pytest.approx(float(assd), abs=1e-4)
    assert row["nsd"] == pytest.approx(float(nsd), abs=1e-6)
    assert 0 < row["nsd"] < 1 and 0 < row["dice"] < 1


def test_hd95_is_the_larger_directed_percentile_not_medpys_pooled_one():
    # A 4x4x4 cube (56 surface voxels) and the same cube plus a 2x2x1 island 5 and 6 voxels
    # beyond it: 4 of the prediction's 60 surface voxels are far (6.7 % > 5 %), but only 4 of
    # the 116 pooled distances (3.4 %), so the directed percentile sees the island and
    # medpy's pooled one does not.
    ref = np.zeros((12, 8, 8), dtype=bool)
    ref[2:6, 2:6, 2:6] = True
    pred = ref.copy()
    pred[10:12, 3:5, 3] = True
    row = structure_metrics(pred, ref, (1.0, 1.0, 1.0))
    assert row["hd95"] == pytest.approx(5.0)
    assert row["assd"] == pytest.approx((5 + 5 + 6 + 6) / 116)
    assert medpy_binary.hd95(pred, ref) == 0.0


def test_shifted_cube_by_hand():
    # 4x4x4 cubes (56 surface voxels each), the prediction one voxel up along the 2.5 mm axis.
    # Each direction: 16 face voxels at 2.5 mm, the 4 inner voxels of the facing face at 1 mm
    # (a side wall is 1 voxel of 1 mm away), the other 36 on the other surface (0 mm).
    ref = np.zeros((8, 8, 9), dtype=bool)
    ref[2:6, 2:6, 2:6] = True
    pred = np.roll(ref, 1, axis=2)
    row = structure_metrics(pred, ref, (1.0, 1.0, 2.5), tolerance_mm=1.0)
    assert row["dice"] == pytest.approx(2 * 48 / 128)
    assert row["iou"] == pytest.approx(48 / 80)
    assert row["hd95"] == pytest.approx(2.5)
    assert row["assd"] == pytest.approx((32 * 2.5 + 8 * 1.0) / 112)
    assert row["nsd"] == pytest.approx(80 / 112)
    assert structure_metrics(pred, ref, (1.0, 1.0, 2.5), tolerance_mm=2.5)["nsd"] == 1.0
    assert row["volume_pred_ml"] == row["volume_ref_ml"] == pytest.approx(64 * 2.5 / 1000)
    assert row["volume_diff_ml"] == 0.0
    assert (row["voxels_pred"], row["voxels_ref"], row["voxels_overlap"]) == (64, 64, 48)
    assert row["empty"] == ""
    assert tuple(row) == ROW_FIELDS


SHAPE, SPACING = (10, 12, 8), (0.7, 1.1, 2.5)
DIAGONAL = math.sqrt((10 * 0.7) ** 2 + (12 * 1.1) ** 2 + (8 * 2.5) ** 2)


def blob() -> np.ndarray:
    mask = np.zeros(SHAPE, dtype=bool)
    mask[2:5, 3:7, 1:4] = True
    return mask


@pytest.mark.parametrize("distance", ["diagonal", "nan"])
@pytest.mark.parametrize(
    ("pred_empty", "ref_empty", "flag"),
    [(True, True, "both"), (True, False, "pred"), (False, True, "ref")],
)
def test_empty_masks_follow_the_rule(distance, pred_empty, ref_empty, flag):
    empty = np.zeros(SHAPE, dtype=bool)
    pred = empty if pred_empty else blob()
    ref = empty if ref_empty else blob()
    row = structure_metrics(pred, ref, SPACING, rule=EmptyRule(one_empty_distance=distance))
    assert row["empty"] == flag
    if flag == "both":
        assert (row["dice"], row["iou"], row["nsd"], row["hd95"], row["assd"]) == (1, 1, 1, 0, 0)
        return
    assert (row["dice"], row["iou"], row["nsd"]) == (0, 0, 0)
    for metric in ("hd95", "assd"):
        if distance == "diagonal":
            assert row[metric] == pytest.approx(DIAGONAL)
        else:
            assert math.isnan(row[metric])
    assert row["volume_pred_ml" if ref_empty else "volume_ref_ml"] == pytest.approx(
        3 * 4 * 3 * 0.7 * 1.1 * 2.5 / 1000
    )


def test_diagonal_is_the_brats_number_and_the_full_image_within_a_case():
    empty = np.zeros((240, 240, 155), dtype=bool)
    tumour = empty.copy()
    tumour[100:110, 100:110, 70:80] = True
    assert structure_metrics(tumour, empty, (1, 1, 1))["hd95"] == pytest.approx(373.13, abs=0.01)
    scheme = LabelScheme.classes({"background": 0, "tumour": 1})
    rows = case_metrics(tumour.astype(np.uint8), empty.astype(np.uint8), (1, 1, 1), scheme)
    assert rows[0]["hd95"] == pytest.approx(373.13, abs=0.01)


def test_bad_rule_and_arguments_are_refused():
    with pytest.raises(ConfigError, match="one_empty_distance"):
        EmptyRule(one_empty_distance="zero")
    with pytest.raises(ValueError, match="shape"):
        structure_metrics(np.zeros((3, 3)), np.zeros((3, 4)), (1, 1))
    with pytest.raises(ValueError, match="spacing"):
        structure_metrics(np.zeros((3, 3, 3)), np.zeros((3, 3, 3)), (1, 1))


def brats_scheme(enhancing: int) -> LabelScheme:
    return LabelScheme(
        "regions",
        names=("TC", "WT", "ET"),
        values=((1, enhancing), (1, 2, enhancing), (enhancing,)),
        paint=(1, 2, enhancing),
        paint_order=(1, 0, 2),
    )


@pytest.mark.parametrize("enhancing", [4, 3], ids=["brats2021", "brats2023"])
def test_brats_regions_by_hand(enhancing):
    e = enhancing
    # Flat index:  0  1  2  3   4  5  6  7   8  9 10 11  12 13 14 15  16 17 18 19  20 21 22 23
    ref = [0, 0, 1, 1, 2, 2, e, e, 0, 2, 2, 0, 0, 1, e, 0, 2, 2, 2, 0, 0, 0, 0, 0]
    pred = [0, 0, 1, e, 2, 2, e, e, 0, 0, 2, 0, 0, 2, e, 0, 2, 2, 0, 0, 0, 0, 0, 1]
    # ET: ref {6,7,14}, pred {3,6,7,14}: 2*3/(3+4). TC: ref {2,3,6,7,13,14}, pred
    # {2,3,6,7,14,23}: 2*5/12. WT: ref 13 voxels, pred 12, 11 shared: 2*11/25.
    rows = case_metrics(
        np.reshape(pred, (2, 3, 4)),
        np.reshape(ref, (2, 3, 4)),
        (1.0, 1.0, 1.0),
        brats_scheme(enhancing),
    )
    dice = {row["label"]: row["dice"] for row in rows}
    assert dice == pytest.approx({"TC": 10 / 12, "WT": 22 / 25, "ET": 6 / 7})
    assert [row["label"] for row in rows] == ["TC", "WT", "ET"]


def test_lits_per_case_and_global_dice_by_hand():
    scheme = LabelScheme.classes({"background": 0, "liver": 1, "tumour": 2})
    cases = {
        # liver: ref 6, pred 7, 6 shared -> 12/13; tumour: ref {5,6}, pred {5} -> 2/3
        "a": ([1, 1, 1, 1, 1, 2, 2, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 2, 1, 1, 0, 0, 0, 0]),
        # liver: ref 8, pred 7, 7 shared -> 14/15; tumour: ref {8..11}, pred {8} -> 2/5
        "b": ([1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2], [1, 1, 1, 1, 1, 1, 1, 0, 2, 0, 0, 0]),
        # all liver, no tumour anywhere: liver 1, tumour both empty -> 1
        "c": ([1] * 12, [1] * 12),
    }
    rows = []
    for case_id, (ref, pred) in cases.items():
        labels = [np.reshape(x, (2, 2, 3)) for x in (pred, ref)]
        rows += [{"case": case_id, **row} for row in case_metrics(*labels, (1, 1, 1), scheme)]
    summary = summarize(rows, ["liver", "tumour"])
    assert summary["tumour"]["dice"]["mean"] == pytest.approx((2 / 3 + 2 / 5 + 1) / 3)
    assert summary["liver"]["dice"]["mean"] == pytest.approx((12 / 13 + 14 / 15 + 1) / 3)
    # Global: overlaps and sizes pooled over the cases.
    assert summary["tumour"]["global_dice"] == pytest.approx(2 * (1 + 1) / (2 + 1 + 4 + 1))
    assert summary["liver"]["global_dice"] == pytest.approx(2 * (6 + 7 + 12) / (13 + 15 + 24))
    assert summary["tumour"]["empty"] == {"both": ["c"], "pred": [], "ref": []}


def test_summary_counts_nan_rows_apart():
    rows = [
        {"case": "a", "label": "x", **structure_metrics(blob(), blob(), SPACING)},
        {"case": "b", "label": "x", **structure_metrics(blob(), np.roll(blob(), 1, 0), SPACING)},
        {
            "case": "c",
            "label": "x",
            **structure_metrics(
                np.zeros(SHAPE, bool), blob(), SPACING, rule=EmptyRule(one_empty_distance="nan")
            ),
        },
    ]
    hd95 = summarize(rows, ["x"])["x"]["hd95"]
    assert (hd95["count"], hd95["nan_count"], hd95["nan_cases"]) == (2, 1, ["c"])
    assert hd95["mean"] == pytest.approx((rows[0]["hd95"] + rows[1]["hd95"]) / 2)
    assert not math.isnan(hd95["std"]) and hd95["median"] == pytest.approx(hd95["mean"])
    dice = summarize(rows, ["x"])["x"]["dice"]
    assert (dice["count"], dice["nan_count"]) == (3, 0)
