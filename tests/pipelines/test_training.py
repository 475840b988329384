"""Training is resumable to the bit, data-parallel without changing the numbers, tracked in
MLflow (even when the server is down), registrable, cross-validated on request, and ends by
measuring how far bf16 changes the model's labels.

The runs that must be other processes are (the one killed mid-epoch, torchrun's ranks);
the others run ``medseg`` in this process, as each new process spends seconds importing
torch, MONAI and MLflow.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

MEDSEG = str(Path(sys.executable).with_name("medseg"))
# One thread in every process (this one runs on one too: the suite's ``single_thread``), so
# a run and its resumed or data-parallel twin add up floating-point numbers in the same order.
SERIAL = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def small_brats(tmp_path_factory):
    from medseg.datasets.synthetic import synthesize

    root = tmp_path_factory.mktemp("small_brats")
    synthesize("brats", root, cases=5, shape=(32, 32, 24), seed=11)
    return root


def write_config(folder: Path, root: Path, **sections) -> Path:
    """A tiny BraTS run in ``folder``; each keyword updates that config section."""
    config = {
        "data": {"layout": "brats", "root": str(root), "folds": 5},
        "network": {"name": "unetpp", "preset": "tiny", "options": {"features": [4, 8, 16]}},
        "transforms": {"patch_size": [16, 16, 16], "samples_per_case": 2},
        "train": {"epochs": 4, "batch_size": 2, "lr": 0.01, "val_every": 2},
        "infer": {"overlap": 0.25, "sw_batch_size": 4},
        "output": str(folder / "run"),
        "tracking": {"enabled": False},
    }
    for section, values in sections.items():
        config[section] = config[section] | values
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def checkpoint_epoch(path: Path) -> int:
    """The last finished epoch a checkpoint holds, counted from 1 (0 before the first one
    is written)."""
    if not path.exists():
        return 0
    return int(torch.load(path, weights_only=True)["epoch"])


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoint_last.pt", weights_only=True)["network"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, small_brats, medseg_here) -> dict[str, torch.Tensor]:
    """Final weights of the tiny run trained from start to end without interruption, in
    this process (the killed run, which the resumed one continues, is another process)."""
    folder = tmp_path_factory.mktemp("whole")
    medseg_here("train", write_config(folder, small_brats))
    return final_weights(folder / "run")


@pytest.mark.slow
@pytest.mark.parametrize("after_epoch", [1, 2])
def test_sigkill_then_resume_ends_with_the_uninterrupted_weights(
    tmp_path, small_brats, uninterrupted, after_epoch, medseg_cli
):
    killed = write_config(tmp_path / "killed", small_brats)
    process = subprocess.Popen(
        [MEDSEG, "train", str(killed)],
        env=os.environ | SERIAL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoint = tmp_path / "killed" / "run" / "checkpoint_last.pt"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and checkpoint_epoch(checkpoint) < after_epoch:
        time.sleep(0.02)
    time.sleep(0.05)  # into the next epoch
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert after_epoch <= checkpoint_epoch(checkpoint) < 4
    resumed_run = medseg_cli("train", "--resume", tmp_path / "killed" / "run")
    assert resumed_run.code == 0, resumed_run.err
    resumed = final_weights(tmp_path / "killed" / "run")
    assert uninterrupted.keys() == resumed.keys()
    for key in uninterrupted:
        torch.testing.assert_close(resumed[key], uninterrupted[key], rtol=0, atol=0, msg=key)


@pytest.mark.slow
def test_two_process_gloo_run_follows_the_single_process_loss_curve(
    tmp_path, small_brats, medseg_cli
):
    # Cross-entropy is a mean over voxels, so half-batches averaged across ranks equal the
    # whole batch; a batch Dice would not split that way.
    for name in ("single", "ddp"):
        write_config(tmp_path / name, small_brats, train={"loss": "ce", "epochs": 3})
    single = medseg_cli("train", tmp_path / "single" / "config.yaml")
    assert single.code == 0, single.err
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29533",
    ]
    distributed = subprocess.run(
        [*torchrun, "-m", "medseg", "train", str(tmp_path / "ddp" / "config.yaml")],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=os.environ | SERIAL,
    )
    assert distributed.returncode == 0, distributed.stderr[-2000:]
    curves = [
        [
            row["train/loss"]
            for row in torch.load(tmp_path / n / "run" / "checkpoint_last.pt", weights_only=True)[
                "history"
            ]
        ]
        for n in ("single", "ddp")
    ]
    assert len(curves[0]) == 3
    torch.testing.assert_close(
        torch.tensor(curves[1]), torch.tensor(curves[0]), rtol=1e-4, atol=1e-5
    )


def test_unreachable_tracking_server_does_not_stop_training(
    tmp_path, small_brats, medseg_cli, monkeypatch
):
    config = write_config(
        tmp_path, small_brats, train={"epochs": 1}, tracking={"enabled": True, "experiment": "x"}
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    result = medseg_cli("train", config)
    assert result.code == 0, result.err
    assert "continuing without tracking" in result.err
    assert result.err.count("continuing without tracking") == 1
    assert (tmp_path / "run" / "model" / "weights.safetensors").is_file()


@pytest.mark.slow
def test_registered_model_predicts_from_a_fresh_directory(
    tmp_path, small_brats, medseg_cli, monkeypatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    config = write_config(
        tmp_path, small_brats, train={"epochs": 1}, tracking={"enabled": True, "experiment": "reg"}
    )
    trained = medseg_cli("train", config, "--register", "brats-tiny")
    assert trained.code == 0, trained.err
    fresh = tmp_path / "elsewhere"
    fresh.mkdir()
    monkeypatch.chdir(fresh)
    case = small_brats / "BraTS2021_00000"
    result = medseg_cli("predict", "models:/brats-tiny/1", case, "--output", "out")
    assert result.code == 0, result.err
    assert (fresh / "out" / "BraTS2021_00000.nii.gz").is_file()


@pytest.mark.slow
def test_cross_validation_trains_every_fold_and_summarises(tmp_path, small_brats, medseg_cli):
    config = write_config(
        tmp_path,
        small_brats,
        train={"epochs": 1},
        data={"folds": 2},
    )
    trained = medseg_cli("train", config, "--folds", "all")
    assert trained.code == 0, trained.err
    summary = json.loads((tmp_path / "run" / "cross_validation.json").read_text())
    assert [fold["fold"] for fold in summary["folds"]] == [0, 1]
    assert set(summary["mean"]) == {"TC", "WT", "ET", "mean"}
    assert all((tmp_path / "run" / f"fold_{k}" / "model" / "config.yaml").is_file() for k in (0, 1))
    resumed = medseg_cli("train", "--resume", tmp_path / "run", "--folds", "all")
    assert resumed.code == 0, resumed.err  # finished folds are skipped
    case = small_brats / "BraTS2021_00001"
    predicted = medseg_cli("predict", tmp_path / "run", case, "--output", tmp_path / "out")
    assert predicted.code == 0, predicted.err
    assert "1 segmented" in predicted.out


def test_training_records_how_far_bf16_changes_its_labels(
    tmp_path, small_brats, medseg_cli, monkeypatch, caplog
):
    import logging

    from mlflow.tracking import MlflowClient

    from medseg.datasets import discover
    from medseg.pipelines.bf16_agreement import measure_bf16_agreement
    from medseg.pipelines.cpu import cpu_features
    from medseg.pipelines.model_dir import load_model_dir, save_model_dir

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    config = write_config(
        tmp_path, small_brats, train={"epochs": 1}, tracking={"enabled": True, "experiment": "b"}
    )
    assert medseg_cli("train", config).code == 0
    model = tmp_path / "run" / "model"
    model_config, network = load_model_dir(model)
    agreement = model_config.inference.bf16_agreement
    if not cpu_features().native_bf16:
        assert agreement is None  # emulated bf16 is never measured, nor run by default
        return
    split = json.loads((tmp_path / "run" / "splits.json").read_text())[0]  # fold 0
    val = [case for case in discover("brats", small_brats).cases if case.id in split["val"]]
    recount = measure_bf16_agreement(model_config, network, val, torch.device("cpu"))
    assert agreement == pytest.approx(recount, abs=1e-6) and 0.5 < agreement <= 1
    run = MlflowClient().get_run(model_config.provenance["mlflow_run_id"])
    assert run.data.metrics["bf16/label_agreement"] == pytest.approx(agreement)

    # a model shown to survive bf16 runs it by default
    shown = model_config.inference.model_copy(update={"bf16_agreement": 1.0})
    save_model_dir(model, model_config.model_copy(update={"inference": shown}), network)
    case = small_brats / "BraTS2021_00000"
    with caplog.at_level(logging.INFO, logger="medseg.pipelines.inference"):
        predicted = medseg_cli("predict", model, case, "--output", tmp_path / "out")
    assert predicted.code == 0, predicted.err
    assert "precision auto: bf16" in caplog.text
