"""Label schemes: disk values -> targets -> painted label maps is the identity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg.datasets.base import LabelScheme
from medseg.datasets.brats import RELEASES
from medseg.transforms.labels import labels_to_target, paint_labels

BRATS_2021 = RELEASES[0].labels()
BRATS_2023 = RELEASES[1].labels()
LITS = LabelScheme.classes({"background": 0, "liver": 1, "tumour": 2})


def random_labels(values, shape=(9, 8, 7), seed=0):
    return np.random.default_rng(seed).choice(values, size=shape).astype(np.uint8)


@pytest.mark.parametrize(
    ("scheme", "values"),
    [(BRATS_2021, [0, 1, 2, 4]), (BRATS_2023, [0, 1, 2, 3]), (LITS, [0, 1, 2])],
    ids=["brats2021", "brats2023", "lits"],
)
def test_target_then_paint_gives_back_the_labels(scheme, values):
    labels = random_labels(values)
    target = labels_to_target(torch.as_tensor(labels)[None], scheme)
    if scheme.mode == "classes":
        one_hot = torch.nn.functional.one_hot(target[0].long(), scheme.out_channels)
        probability = one_hot.movedim(-1, 0).float()
    else:
        probability = target
    np.testing.assert_array_equal(paint_labels(probability, scheme), labels)


def test_brats_regions_are_the_nested_unions():
    labels = torch.tensor([[0, 1, 2, 4]])
    target = labels_to_target(labels, BRATS_2021)
    assert target.tolist() == [[0, 1, 0, 1], [0, 1, 1, 1], [0, 0, 0, 1]]


def test_scheme_survives_its_dict_form():
    assert LabelScheme.from_dict(BRATS_2021.to_dict()) == BRATS_2021
    assert LabelScheme.from_dict(LITS.to_dict()) == LITS
