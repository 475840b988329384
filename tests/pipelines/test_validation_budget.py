"""Validation during training has a bounded cost: a case whose sliding pass needs more
windows than its share of ``train.val_max_windows`` is scored on a fixed sample of windows,
and the best checkpoint gets the full pass at the end."""

from __future__ import annotations

import csv
import json
import logging

import numpy as np
import pytest
import torch
from monai.data.utils import dense_patch_slices

from medseg.config import Config
from medseg.datasets.brats import RELEASES
from medseg.networks import build_network
from medseg.pipelines.model_dir import InferenceSpec
from medseg.pipelines.validation import sliding_window_count, validate, window_starts


@pytest.mark.parametrize(
    ("spatial", "roi", "overlap"),
    [
        ((64, 40, 24), (16, 16, 16), 0.5),
        ((33, 17, 9), (16, 16, 16), 0.25),
        ((50, 50), (32, 32), 0.0),
    ],
)
def test_window_count_is_monais(spatial, roi, overlap):
    steps = [
        max(int(w * (1 - overlap)), 1) if s > w else w for s, w in zip(spatial, roi, strict=True)
    ]
    padded = [max(s, w) for s, w in zip(spatial, roi, strict=True)]
    assert sliding_window_count(spatial, roi, overlap) == len(
        dense_patch_slices(padded, roi, steps)
    )


def test_sample_windows_are_fixed_inside_and_half_on_the_foreground():
    # one mask per region, the foreground in the last region only
    label = torch.zeros(3, 40, 30, 20)
    label[2, 30:34, 5:8, 2:4] = 1
    starts = window_starts(label, [16, 16, 16], 6, seed=3)
    assert starts == window_starts(label, [16, 16, 16], 6, seed=3)
    for index, start in enumerate(starts):
        assert all(0 <= s <= size - 16 for s, size in zip(start, (40, 30, 20), strict=True))
        window = label[(slice(None), *(slice(s, s + 16) for s in start))]
        if index % 2 == 0:
            assert window.any()


def _case(seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    label = torch.zeros(1, 3, 48, 40, 32)
    label[:, :, 10:30, 12:28, 8:20] = 1
    return {
        "id": [f"case{seed}"],
        "image": torch.randn(1, 4, 48, 40, 32, generator=generator),
        "label": label,
    }


def test_validate_samples_large_cases_the_same_way_every_time():
    torch.manual_seed(0)
    network = build_network(
        "unetpp",
        spatial_dims=3,
        in_channels=4,
        out_channels=3,
        preset="tiny",
        features=[4, 8, 16],
    ).eval()
    scheme = RELEASES[0].labels()
    inference = InferenceSpec(roi_size=[16, 16, 16], overlap=0.5, sw_batch_size=4)
    cases = [_case(0), _case(1)]
    cpu = torch.device("cpu")
    # a budget of 8 gives each case 4 windows of the 60 (5 x 4 x 3) its full pass needs
    assert sliding_window_count((48, 40, 32), (16, 16, 16), 0.5) == 60
    sampled, count = validate(network, cases, scheme, inference, cpu, max_windows=8, cases=2)
    again, _ = validate(network, cases, scheme, inference, cpu, max_windows=8, cases=2)
    full, full_count = validate(network, cases, scheme, inference, cpu, cases=2)
    assert count == 2 and full_count == 0
    assert sampled == again
    assert [row["case"] for row in sampled] == ["case0", "case1"]
    assert sampled != full
    roomy, roomy_count = validate(network, cases, scheme, inference, cpu, max_windows=120, cases=2)
    assert roomy_count == 0 and roomy == full


@pytest.mark.slow
def test_training_scores_windows_then_the_best_checkpoint_in_full(tmp_path, caplog):
    from medseg.datasets import discover
    from medseg.datasets.synthetic import synthesize
    from medseg.pipelines.model_dir import load_model_dir
    from medseg.pipelines.training.train import train
    from medseg.transforms.presets import validation_transforms

    root = tmp_path / "data"
    synthesize("brats", root, cases=4, shape=(32, 32, 24), seed=5)
    config = Config.model_validate(
        {
            "data": {"layout": "brats", "root": str(root), "folds": 4},
            "network": {"name": "unetpp", "preset": "tiny", "options": {"features": [4, 8, 16]}},
            "transforms": {"patch_size": [16, 16, 16], "samples_per_case": 2},
            "train": {"epochs": 2, "batch_size": 2, "lr": 0.01, "val_max_windows": 2},
            "infer": {"overlap": 0.25, "sw_batch_size": 4},
            "output": str(tmp_path / "run"),
            "tracking": {"enabled": False},
        }
    )
    with caplog.at_level(logging.INFO, logger="medseg"):
        result = train(config, show_progress=False)
    assert "on sample windows" in caplog.text
    assert "full validation of the best checkpoint" in caplog.text
    assert "validated " in caplog.text
    summary = json.loads((result.run_dir / "training_summary.json").read_text())
    assert "val/dice_mean" in summary["full_validation"]
    with (result.run_dir / "validation.csv").open(newline="") as handle:
        written = list(csv.DictReader(handle))

    model_config, network = load_model_dir(result.model_dir)
    val_ids = json.loads((result.run_dir / "splits.json").read_text())[0]["val"]
    by_id = {case.id: case for case in discover("brats", root).cases}
    transform = validation_transforms(model_config.preprocessing, model_config.scheme)
    batches = []
    for case_id in val_ids:
        data = transform(by_id[case_id].as_dict())
        batches.append(
            {"id": [case_id], "image": data["image"][None], "label": data["label"][None]}
        )
    expected, _ = validate(
        network,
        batches,
        model_config.scheme,
        model_config.inference,
        torch.device("cpu"),
        cases=len(batches),
    )
    assert [row["case"] for row in written] == [row["case"] for row in expected]
    for row, reference in zip(written, expected, strict=True):
        for name in model_config.scheme.foreground:
            assert float(row[name]) == pytest.approx(reference[name], abs=1e-4)
    assert np.isfinite(summary["full_validation"]["val/dice_mean"])
