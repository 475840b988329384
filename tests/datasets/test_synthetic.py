"""Phantoms of every layout: reproducible per case, and shapes checked before writing."""

from __future__ import annotations

import filecmp

import pytest

from medseg.datasets.synthetic import WRITERS, synthesize
from medseg.errors import ConfigError

from .conftest import PHANTOMS


@pytest.mark.parametrize("layout", WRITERS)
def test_case_i_is_the_same_whatever_the_number_of_cases(tmp_path, phantom_roots, layout):
    _, shape, _ = PHANTOMS[layout]
    (first,) = synthesize(layout, tmp_path, cases=1, shape=shape, seed=7)
    again = phantom_roots[layout] / first.relative_to(tmp_path)
    if first.is_dir():
        assert not filecmp.dircmp(first, again).diff_files
    else:
        assert first.read_bytes() == again.read_bytes()


@pytest.mark.parametrize("layout", WRITERS)
def test_shape_of_the_wrong_dimensionality_is_refused(tmp_path, layout):
    sizes = 3 if WRITERS[layout].dims == 2 else 2
    with pytest.raises(ConfigError, match=f"{layout} phantoms need {WRITERS[layout].dims} sizes"):
        synthesize(layout, tmp_path, cases=1, shape=(16,) * sizes)
