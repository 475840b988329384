"""Learning on real MRI: trained on some axial slabs of a real brain, medseg segments the
slabs between them, anatomy it never saw, with a mean Dice >= 0.85 for grey and for white
matter and no slab below 0.75 (the most inferior held-out slab cuts the cerebellum, whose
white matter there is about 1,600 voxels at 2 mm, and scored 0.83-0.86 with seeds 0-2).

The brain is the MNI ICBM152 2009a T1 template that nilearn ships (the average of 152 real
scans; see ``conftest.py`` for the slabs, the labels and the recipe). The model is trained
once per session by the ``real_brain_model`` fixture; the invariance tests reuse it.
"""

from __future__ import annotations

import csv

import pytest

# Mean over the held-out slabs per class (the figure ``medseg evaluate`` reports), and the
# least any one slab may score.
MIN_DICE = 0.85
MIN_SLAB_DICE = 0.75


@pytest.mark.slow
def test_unetpp_segments_brain_slabs_it_was_not_trained_on(real_brain_model, medseg_cli, tmp_path):
    slabs = real_brain_model.slabs
    trained = {path.name for path in (slabs.train / "images").iterdir()}
    assert trained and not trained & {path.name for path in (slabs.test / "images").iterdir()}

    predicted = medseg_cli(
        "predict", real_brain_model.model_dir, slabs.test / "images", "--output", tmp_path / "pred"
    )
    assert predicted.code == 0, predicted.err
    labels = ",".join(f"{name}={value}" for name, value in slabs.labels.items())
    evaluated = medseg_cli(
        "evaluate", tmp_path / "pred", slabs.test / "labels", "--labels", labels,
        "-o", tmp_path / "eval", "--workers", "1",
    )  # fmt: skip
    assert evaluated.code == 0, evaluated.err

    with (tmp_path / "eval" / "metrics.csv").open(encoding="utf-8") as table:
        dice = {(row["case"], row["label"]): float(row["dice"]) for row in csv.DictReader(table)}
    assert {case for case, _ in dice} == set(slabs.held_out())
    assert {label for _, label in dice} == set(slabs.labels)
    found = {key: round(value, 3) for key, value in sorted(dice.items())}
    for label in slabs.labels:
        scores = [value for (_, name), value in dice.items() if name == label]
        assert sum(scores) / len(scores) >= MIN_DICE, (label, found)
    assert min(dice.values()) >= MIN_SLAB_DICE, found
