"""Splits: reproducible from a seed, every case validated once, patients kept whole."""

from __future__ import annotations

import pytest

from medseg.datasets.splits import holdout_split, kfold_splits, load_splits, save_splits
from medseg.errors import ConfigError

IDS = [f"BraTS2021_{i:05d}" for i in range(11)]


def test_same_seed_same_splits_other_seed_other_splits():
    assert kfold_splits(IDS, 5, seed=1) == kfold_splits(IDS, 5, seed=1)
    assert kfold_splits(IDS, 5, seed=1) != kfold_splits(IDS, 5, seed=2)


def test_every_case_is_validated_exactly_once_and_never_trained_on_then():
    splits = kfold_splits(IDS, 5, seed=0)
    validated = [c for split in splits for c in split["val"]]
    assert sorted(validated) == sorted(IDS)
    for split in splits:
        assert not set(split["train"]) & set(split["val"])
        assert sorted(split["train"] + split["val"]) == sorted(IDS)


def test_time_points_of_one_patient_stay_in_one_fold():
    ids = [f"BraTS-GLI-{p:05d}-{t:03d}" for p in range(6) for t in range(2)]
    for split in kfold_splits(ids, 3, seed=4):
        patients_val = {c[:15] for c in split["val"]}
        patients_train = {c[:15] for c in split["train"]}
        assert not patients_val & patients_train


def test_splits_round_trip_through_json(tmp_path):
    splits = kfold_splits(IDS, 3, seed=0)
    save_splits(tmp_path / "splits.json", splits)
    assert load_splits(tmp_path / "splits.json") == splits


def test_too_few_patients_for_the_folds():
    with pytest.raises(ConfigError, match="2 patients cannot make 5 folds"):
        kfold_splits(IDS[:2], 5, seed=0)


def test_holdout_is_reproducible_and_keeps_patients_whole():
    ids = [f"BraTS-GLI-{p:05d}-{t:03d}" for p in range(10) for t in range(2)]
    split = holdout_split(ids, 0.2, seed=3)
    assert split == holdout_split(ids, 0.2, seed=3)
    assert split != holdout_split(ids, 0.2, seed=4)
    assert sorted(split["train"] + split["val"]) == sorted(ids)
    assert len(split["val"]) == 4  # 2 of 10 patients, both time points each
    assert not {c[:15] for c in split["val"]} & {c[:15] for c in split["train"]}


def test_holdout_round_trips_through_json_and_keeps_one_patient_each_side(tmp_path):
    split = holdout_split(["volume-0", "volume-1", "volume-2"], 0.9, seed=0)
    assert (len(split["train"]), len(split["val"])) == (1, 2)
    save_splits(tmp_path / "holdout.json", [split])
    assert load_splits(tmp_path / "holdout.json") == [split]


@pytest.mark.parametrize(("ids", "fraction"), [(["volume-0"], 0.2), (IDS, 0.0), (IDS, 1.0)])
def test_holdout_refuses_what_cannot_be_split(ids, fraction):
    with pytest.raises(ConfigError):
        holdout_split(ids, fraction, seed=0)
