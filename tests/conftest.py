"""Fixtures shared across the suite: thread count, phantoms, a trained tiny model, the CLI."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def single_thread() -> Iterator[None]:
    """Run on one intra-op thread, restoring the count afterwards.

    The tiny networks are too small to gain from threads, and on a shared 2-core machine
    every parallel region waits for a busy core: a tiny H-DenseUNet step takes 2 s on two
    threads against 0.07 s on one.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def all_cores() -> Iterator[None]:
    """Train on every core for the duration of one test (training tests are compute-bound)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private SQLite MLflow store for the session (``MLFLOW_TRACKING_URI`` set)."""
    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    yield uri
    if previous is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous


@pytest.fixture(scope="session")
def brats_phantoms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small BraTS 2021 phantoms: ``train`` (8 cases) and held-out ``test`` (3 cases)."""
    from medseg.datasets.synthetic import synthesize

    root = tmp_path_factory.mktemp("brats")
    synthesize("brats", root / "train", cases=8, shape=(64, 64, 48), seed=0)
    synthesize("brats", root / "test", cases=3, shape=(64, 64, 48), seed=1)
    return {"train": root / "train", "test": root / "test"}


@dataclass
class CliResult:
    """What a ``medseg`` invocation did: exit status and captured output."""

    code: int
    out: str
    err: str


@pytest.fixture
def medseg_cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run the ``medseg`` command in this process: ``medseg_cli("train", "cfg.yaml")``."""
    from medseg.cli import main

    def run(*args: str | Path) -> CliResult:
        capsys.readouterr()
        argv = sys.argv
        sys.argv = ["medseg", *map(str, args)]
        try:
            main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        finally:
            sys.argv = argv
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def write_untrained_model(
    directory: Path,
    *,
    layout: str,
    modality: str,
    channels: list[str],
    labels: Any,
    patch_size: list[int],
    features: list[int],
    spatial_dims: int | None = None,
    intensity: dict[str, float] | None = None,
) -> Path:
    """Write a model directory holding an untrained, seeded UNet++ with ``features`` per
    level for ``labels`` (a ``LabelScheme``); ``patch_size`` is the sliding-window roi (2 sizes:
    a 2D network), ``spatial_dims`` the data's (default: the roi's). Returns ``directory``."""
    from medseg.pipelines.model_dir import (
        InferenceSpec,
        ModelConfig,
        NetworkSpec,
        build_from_config,
        save_model_dir,
    )
    from medseg.transforms.presets import Preprocessing

    config = ModelConfig(
        network=NetworkSpec(
            name="unetpp",
            preset="tiny",
            spatial_dims=len(patch_size),
            in_channels=len(channels),
            out_channels=labels.out_channels,
            options={"features": features},
        ),
        preprocessing=Preprocessing(
            layout=layout,
            modality=modality,
            channels=channels,
            spatial_dims=spatial_dims or len(patch_size),
            patch_size=patch_size,
            intensity=intensity or {},
        ),
        labels=labels.to_dict(),
        inference=InferenceSpec(roi_size=patch_size),
    )
    torch.manual_seed(0)
    return save_model_dir(directory, config, build_from_config(config))


@pytest.fixture(scope="session")
def untrained_model() -> Callable[..., Path]:
    """``write_untrained_model``, for tests that need a model of their own layout."""
    return write_untrained_model


@pytest.fixture(scope="session")
def brats_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny 3D UNet++ model directory for BraTS (4 channels, 3 regions)."""
    from medseg.datasets.brats import CHANNEL_NAMES, RELEASES

    return write_untrained_model(
        tmp_path_factory.mktemp("models") / "brats-tiny",
        layout="brats",
        modality="mri",
        channels=list(CHANNEL_NAMES),
        labels=RELEASES[0].labels(),
        patch_size=[16, 16, 16],
        features=[4, 8, 16],
    )


@pytest.fixture(scope="session")
def ct_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny 3D UNet++ model directory for LiTS CT (1 channel, 3 classes)."""
    from medseg.datasets.lits import LABELS

    return write_untrained_model(
        tmp_path_factory.mktemp("models") / "lits-tiny",
        layout="lits",
        modality="ct",
        channels=["ct"],
        labels=LABELS,
        patch_size=[16, 16, 16],
        features=[4, 8, 16],
        intensity={"window_low": -200.0, "window_high": 250.0, "mean": 60.0, "std": 40.0},
    )
