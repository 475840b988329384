"""Where a model lives: a run directory given as MODEL, and model files others can read."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest
import torch

from medseg.pipelines.model_dir import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    build_from_config,
    open_model,
    read_model_config,
    save_model_dir,
)

REPOSITORY = Path(__file__).resolve().parents[2]


@pytest.fixture
def run_dir(brats_model_dir: Path, tmp_path: Path) -> Path:
    """A run directory as ``medseg train`` leaves it: the run's own ``config.yaml`` (a
    training config, not a model config) beside ``model/``."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(REPOSITORY / "configs" / "demo.yaml", run / CONFIG_FILE)
    shutil.copytree(brats_model_dir, run / "model")
    return run


def test_a_run_directory_opens_as_its_model(run_dir: Path) -> None:
    config, network = open_model(run_dir)
    expected_config, expected_network = open_model(run_dir / "model")
    assert config == expected_config
    for name, tensor in expected_network.state_dict().items():
        assert torch.equal(network.state_dict()[name], tensor)


def test_medseg_info_takes_a_run_directory(run_dir: Path, medseg_cli) -> None:
    result = medseg_cli("info", run_dir, "--json")
    assert result.code == 0, result.err
    assert '"name": "unetpp"' in result.out


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_a_saved_model_gets_the_modes_the_umask_gives(
    brats_model_dir: Path, tmp_path: Path, umask: int
) -> None:
    import medseg.files

    config = read_model_config(brats_model_dir)
    previous = os.umask(umask)
    # The module reads the umask once, at import; this test sets its own.
    saved_umask, medseg.files._UMASK = medseg.files._UMASK, umask
    try:
        directory = save_model_dir(tmp_path / "model", config, build_from_config(config))
    finally:
        os.umask(previous)
        medseg.files._UMASK = saved_umask
    assert stat.S_IMODE(directory.stat().st_mode) == 0o777 & ~umask
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o666 & ~umask
