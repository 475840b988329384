"""Post-processing rules on label maps: largest component, small components, holes, and
structures kept inside their container (LiTS tumour inside liver)."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.datasets.base import LabelScheme
from medseg.errors import ConfigError
from medseg.pipelines.model_dir import Postprocessing
from medseg.pipelines.prediction.postprocess import postprocess

LITS = LabelScheme.classes({"background": 0, "liver": 1, "tumour": 2})


def liver_with_tumour() -> np.ndarray:
    labels = np.zeros((20, 20, 10), dtype=np.uint8)
    labels[2:12, 2:12, 2:8] = 1  # liver
    labels[5:8, 5:8, 4:6] = 2  # tumour inside it
    labels[6, 6, 3] = 0  # a hole in the liver
    labels[15:17, 15:17, 1:3] = 1  # a stray liver blob
    labels[17:19, 2:4, 7:9] = 2  # a tumour far from the liver
    return labels


def test_lits_rules_keep_the_organ_and_its_tumours_only():
    rules = Postprocessing(
        largest_component=["liver"], fill_holes=["liver"], inside={"tumour": "liver"}
    )
    result = postprocess(liver_with_tumour(), LITS, rules, voxel_ml=0.001)
    assert result[15:17, 15:17, 1:3].max() == 0  # stray blob removed
    assert result[17:19, 2:4, 7:9].max() == 0  # tumour outside the liver removed
    assert result[6, 6, 3] == 1  # hole filled with liver
    assert (result[5:8, 5:8, 4:6] == 2).all()  # tumour inside the liver kept


def test_small_components_are_removed_by_volume():
    labels = liver_with_tumour()
    rules = Postprocessing(min_component_ml={"liver": 0.05})  # 50 voxels of 1 mm^3
    result = postprocess(labels, LITS, rules, voxel_ml=0.001)
    assert result[15:17, 15:17, 1:3].max() == 0
    assert (result[2:5, 2:5, 2:4] == 1).all()


def test_rules_must_name_known_structures():
    with pytest.raises(ConfigError, match="postprocess names lung"):
        Postprocessing(largest_component=["lung"]).check(LITS)
