"""UNet++ pruning: every level measured on a trained tiny model, the tolerance rule, a pruned
model directory that predicts exactly as the full model's head, and the refusals."""

from __future__ import annotations

import csv
import itertools
import json
import os
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from rich.console import Console

from medseg.config import Config
from medseg.datasets import discover
from medseg.errors import ConfigError
from medseg.pipelines.model_dir import WEIGHTS_FILE, open_model, save_model_dir
from medseg.pipelines.prediction.predict import predict
from medseg.pipelines.pruning.prune import (
    choose_level,
    parse_levels,
    prune,
    prune_after_training,
    save_pruned_model,
)
from medseg.pipelines.pruning.prune_report import pruning_table, track_pruning
from medseg.pipelines.tracking import Tracker

# test_end_to_end.py's tiny UNet++ (depth 3: levels 1..3), trained on fewer patches for
# fewer epochs: the heads only need to learn something, not to converge.
TINY_UNETPP = {
    "data": {"layout": "brats", "folds": 4, "fold": 0},
    "network": {
        "name": "unetpp",
        "preset": "tiny",
        "options": {"features": [8, 16, 32, 64], "norm": "batch"},
    },
    "transforms": {"patch_size": [32, 32, 32], "samples_per_case": 4},
    "train": {"epochs": 4, "batch_size": 2, "lr": 0.01, "val_every": 4, "warmup_epochs": 1},
    "infer": {"overlap": 0.25, "sw_batch_size": 4},
    "tracking": {"enabled": False},
}
LEVELS = [1, 2, 3]
# What the training run of ``trained_model`` handed to its post-training step.
FINISHED: list = []
TOLERANCE = 0.1


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory, brats_phantoms) -> Path:
    """The tiny UNet++ trained on the BraTS phantoms; its model directory."""
    from medseg.pipelines.training.train import train

    run_dir = tmp_path_factory.mktemp("prune") / "run"
    config = Config.model_validate(
        TINY_UNETPP
        | {"data": TINY_UNETPP["data"] | {"root": str(brats_phantoms["train"])}}
        | {"output": str(run_dir)}
    )
    # What the function-scoped ``all_cores`` fixture does, for this module-scoped one.
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    try:
        return train(config, show_progress=False, after=[FINISHED.append]).model_dir
    finally:
        torch.set_num_threads(threads)


def test_training_runs_the_post_training_steps_attached_to_it(trained_model) -> None:
    (finished,) = FINISHED
    assert finished.model_dir == trained_model
    assert (trained_model / "weights.safetensors").is_file()
    splits = json.loads((trained_model.parent / "splits.json").read_text())
    assert [case.id for case in finished.val_cases] == splits[0]["val"]
    assert finished.config.output == trained_model.parent


@pytest.fixture(scope="module")
def pruned(trained_model, brats_phantoms, tmp_path_factory):
    """``prune`` on the held-out phantoms, on one thread (the suite's), three repeats."""
    output = tmp_path_factory.mktemp("pruning")
    return prune(trained_model, brats_phantoms["test"], output, tolerance=TOLERANCE, repeats=3)


@pytest.mark.slow
def test_table_holds_every_level_and_time_falls_with_the_level(pruned):
    assert [m.level for m in pruned.levels] == LEVELS
    assert pruned.reference_level == 3
    parameters = [m.parameters for m in pruned.levels]
    flops = [m.flops for m in pruned.levels]
    seconds = [m.seconds_per_case for m in pruned.levels]
    assert parameters == sorted(set(parameters)) and flops == sorted(set(flops))
    # Each level costs at least 1.5x the FLOPs of the one below (2.2x, 1.7x here), so a
    # median of interleaved runs keeps the order; L1 against L3 (3.6x FLOPs) with margin.
    assert all(b / a >= 1.5 for a, b in itertools.pairwise(flops)), flops
    assert seconds[0] < seconds[1] < seconds[2], seconds
    assert seconds[0] < 0.7 * seconds[2], seconds
    for m in pruned.levels:
        assert set(m.dice) == {"TC", "WT", "ET"}
        assert 0.0 <= m.dice_mean <= 1.0
        assert m.dice_mean == pytest.approx(np.mean(list(m.dice.values())))

    with pruned.paths["table"].open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == [
        "level",
        "parameters",
        "flops",
        "seconds_per_case",
        "dice_mean",
        "dice_TC",
        "dice_WT",
        "dice_ET",
        "chosen",
    ]
    assert [int(row["level"]) for row in rows] == LEVELS
    assert [row["chosen"] for row in rows] == [
        str(m.level == pruned.chosen_level) for m in pruned.levels
    ]
    assert pruned.paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    console = Console(record=True, width=120)
    console.print(pruning_table(pruned))
    text = console.export_text()
    assert all(f"L{level}" in text for level in LEVELS)


@pytest.mark.slow
def test_chosen_level_is_the_smallest_within_the_tolerance(pruned):
    dice = {m.level: m.dice_mean for m in pruned.levels}
    threshold = dice[3] - TOLERANCE
    assert dice[pruned.chosen_level] >= threshold
    assert all(dice[level] < threshold for level in LEVELS if level < pruned.chosen_level)
    # The briefly trained heads score within a few points of each other, so pruning cuts.
    assert pruned.chosen_level < 3, dice


@pytest.mark.parametrize(
    ("dice", "tolerance", "chosen"),
    [
        ({1: 0.5, 2: 0.75, 3: 1.0}, 0.25, 2),  # exactly at the threshold counts
        ({1: 0.5, 2: 0.75, 3: 1.0}, 0.0, 3),
        ({1: 0.5, 2: 0.75, 3: 1.0}, 0.5, 1),
        ({1: 0.9, 2: 0.5, 3: 0.8}, 0.0, 1),  # a shallow head better than the deepest
        ({2: 0.7, 4: 0.75}, 0.01, 4),
    ],
)
def test_choose_level(dice, tolerance, chosen):
    assert choose_level(dice, tolerance) == chosen


def test_parse_levels():
    assert parse_levels("3, 1,2") == [1, 2, 3]
    for text in ("", "1,,2", "0,1", "a"):
        with pytest.raises(ConfigError, match="--levels"):
            parse_levels(text)


def _predictions(model, case_folder: Path, output: Path, **options) -> np.ndarray:
    report = predict(model, [str(case_folder)], output, show_progress=False, **options)
    assert report.failed == 0
    (case,) = report.cases
    return np.asarray(nib.load(case.output).dataobj)


@pytest.mark.slow
def test_pruned_model_predicts_as_the_full_models_head(
    pruned, trained_model, brats_phantoms, tmp_path
):
    level = pruned.chosen_level
    model = pruned.paths["model"]
    config, network = open_model(model)
    assert config.network.options["prune_level"] == level
    assert config.provenance["pruned_from"] == str(trained_model)
    assert config.provenance["pruning"]["table"] == pruned.rows()
    _, full = open_model(trained_model)
    assert network.levels == level
    assert set(network.state_dict()) == set(full.level_parameter_names(level))
    assert (model / WEIGHTS_FILE).stat().st_size < (trained_model / WEIGHTS_FILE).stat().st_size

    case = discover("brats", brats_phantoms["test"]).cases[0]
    folder = case.image[0].parent
    ours = _predictions(model, folder, tmp_path / "pruned")
    theirs = _predictions(trained_model, folder, tmp_path / "full", prune_level=level)
    deepest = _predictions(trained_model, folder, tmp_path / "deepest")
    np.testing.assert_array_equal(ours, theirs)
    assert not np.array_equal(ours, deepest), "the pruned model must not be the full one"


@pytest.mark.slow
def test_every_level_prunes_to_exactly_its_weights(pruned, trained_model, tmp_path):
    config, full = open_model(trained_model)
    window = torch.randn(1, 4, 32, 32, 32)
    sizes = []
    for level in LEVELS:
        directory = save_pruned_model(
            tmp_path / f"L{level}", config, full, replace(pruned, chosen_level=level)
        )
        _, network = open_model(directory)
        with torch.inference_mode():
            assert torch.equal(network(window), full(window, prune_level=level))
        sizes.append((directory / WEIGHTS_FILE).stat().st_size)
    assert sizes == sorted(set(sizes))


def test_refuses_a_network_other_than_unetpp(brats_model_dir, brats_phantoms, tmp_path):
    config, _ = open_model(brats_model_dir)
    other = config.model_copy(
        update={"network": config.network.model_copy(update={"name": "swin_unetr", "options": {}})}
    )
    from medseg.pipelines.model_dir import build_from_config

    directory = save_model_dir(tmp_path / "swin", other, build_from_config(other))
    with pytest.raises(ConfigError, match=r"needs a UNet\+\+ model.*swin_unetr"):
        prune(directory, brats_phantoms["test"], tmp_path / "out")


@pytest.mark.slow
def test_refuses_a_level_the_pruned_model_lacks(pruned, brats_phantoms, tmp_path):
    with pytest.raises(ConfigError, match=f"already pruned to level {pruned.chosen_level}"):
        prune(pruned.paths["model"], brats_phantoms["test"], tmp_path / "out", levels=[3])


@pytest.mark.slow
def test_pruning_is_tracked_alone_and_after_training(
    pruned, trained_model, brats_phantoms, mlflow_uri
):
    import mlflow

    client = mlflow.MlflowClient(mlflow_uri)
    run_id = track_pruning(pruned, experiment="prune-test")
    run = client.get_run(run_id)
    assert run.data.params["prune.chosen_level"] == str(pruned.chosen_level)
    history = client.get_metric_history(run_id, "prune/seconds_per_case")
    assert sorted(metric.step for metric in history) == LEVELS
    assert {a.path for a in client.list_artifacts(run_id, "pruning")} >= {
        "pruning/pruning.csv",
        "pruning/pruning.png",
        "pruning/model",
    }

    validation = discover("brats", brats_phantoms["test"]).cases[:1]
    with Tracker(experiment="prune-after-training") as tracker:
        result = prune_after_training(trained_model, validation, tracker, repeats=1)
    assert result is not None
    assert result.paths["model"] == trained_model.parent / "pruning" / "model"
    metrics = client.get_run(tracker.run_id).data.metrics
    assert metrics["prune/chosen_level"] == result.chosen_level


@pytest.mark.slow
def test_one_pass_dice_equals_a_pass_per_level(pruned, trained_model, brats_phantoms):
    """The table's Dice (every level from one sliding pass per case) is what a separate
    sliding pass per level gives, the way ``prune`` measured before, so the chosen level is
    the same."""
    from monai.metrics import compute_dice

    from medseg.networks.inference_layout import inference_network
    from medseg.pipelines.inference import sliding_window_predict
    from medseg.transforms.labels import binary_prediction, binary_target
    from medseg.transforms.presets import validation_transforms

    config, network = open_model(trained_model)
    network = inference_network(network.eval(), torch.device("cpu"))
    scheme, inference = config.scheme, config.inference
    cases = discover("brats", brats_phantoms["test"], need_labels=True).cases
    dice: dict[int, list[torch.Tensor]] = {level: [] for level in LEVELS}
    for case in cases:
        data = validation_transforms(config.preprocessing, scheme)(case.as_dict())
        reference = binary_target(
            torch.as_tensor(data["label"]).as_subclass(torch.Tensor)[None], scheme
        )
        for level in LEVELS:
            logits = sliding_window_predict(
                network,
                data["image"][None],
                roi_size=inference.roi_size,
                overlap=inference.overlap,
                sw_batch_size=inference.sw_batch_size,
                mode=inference.mode,
                skip_empty=True,
                prune_level=level,
            )
            predicted = binary_prediction(logits, scheme)
            dice[level].append(compute_dice(predicted, reference, ignore_empty=False)[0])
    names = list(scheme.foreground)
    exhaustive = {}
    for m in pruned.levels:
        per_structure = torch.stack(dice[m.level]).mean(0)
        assert [m.dice[name] for name in names] == pytest.approx(per_structure.tolist(), abs=1e-6)
        exhaustive[m.level] = float(per_structure.mean())
    assert choose_level(exhaustive, TOLERANCE) == pruned.chosen_level
    assert pruned.windows == 8
