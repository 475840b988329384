"""Issue 23: models and runs that produced all-background label maps or took the machine
down without a word: non-finite or ill-fitting weights, non-finite settings, a diverging
loss, complex voxels and a training patch beyond memory."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from medseg.datasets.synthetic import synthesize
from tests.reliability.test_arguments import one_line_refusal

SHAPE = (24, 24, 16)


@pytest.fixture
def volume(tmp_path) -> Path:
    synthesize("lits", tmp_path / "lits", cases=1, shape=SHAPE, seed=3)
    return tmp_path / "lits" / "volume-0.nii"


def tampered_model(source: Path, folder: Path, change) -> tuple[Path, str]:
    """A copy of model directory ``source`` whose first floating tensor ``change`` rewrote."""
    model = Path(shutil.copytree(source, folder))
    state = load_file(model / "weights.safetensors")
    name = next(k for k, v in state.items() if v.is_floating_point() and v.ndim > 1)
    state[name] = change(state[name])
    save_file(state, model / "weights.safetensors")
    return model, name


def with_nan(tensor: torch.Tensor) -> torch.Tensor:
    tensor = tensor.clone()
    tensor.view(-1)[0] = float("nan")
    return tensor


def wrong_shape(tensor: torch.Tensor) -> torch.Tensor:
    return torch.zeros(tensor.shape[0] + 1, *tensor.shape[1:])


# ---- 7 and 13: weights are checked when a model loads ----


@pytest.mark.parametrize(
    ("change", "problem"), [(with_nan, "NaN or infinite"), (wrong_shape, "has shape")]
)
def test_unusable_weights_are_refused_naming_the_file_and_tensor(
    change, problem, tmp_path, volume, ct_model_dir, medseg_cli
):
    model, name = tampered_model(ct_model_dir, tmp_path / "model", change)
    result = medseg_cli("predict", model, volume, "-o", tmp_path / "out")
    one_line_refusal(result, 2, "weights.safetensors", name, problem)
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_of_the_wrong_shape_is_refused_in_one_line(
    tmp_path, volume, ct_model_dir, medseg_cli
):
    run = tmp_path / "run"
    shutil.copytree(ct_model_dir, run / "model")
    state = load_file(run / "model" / "weights.safetensors")
    name = next(k for k, v in state.items() if v.ndim > 1)
    state[name] = wrong_shape(state[name])
    torch.save({"network": state, "epoch": 0}, run / "checkpoint_best.pt")
    result = medseg_cli("predict", run / "checkpoint_best.pt", volume, "-o", tmp_path / "out")
    one_line_refusal(result, 2, "checkpoint_best.pt", name, "has shape")


# ---- 7: non-finite settings and a diverging loss ----


def training_config(folder: Path, data: Path, **train) -> Path:
    config = {
        "data": {"layout": "lits", "root": str(data), "folds": 2},
        "network": {"name": "unetpp", "preset": "tiny", "options": {"features": [2, 4, 8]}},
        "transforms": {"patch_size": [16, 16, 16], "samples_per_case": 1, "cache": "none"},
        "train": {"epochs": 2, "batch_size": 1, "iterations_per_epoch": 2} | train,
        "output": str(folder / "run"),
        "tracking": {"enabled": False},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def lits_data(tmp_path) -> Path:
    synthesize("lits", tmp_path / "data", cases=4, shape=SHAPE, seed=5)
    return tmp_path / "data"


@pytest.mark.parametrize(
    ("override", "key"),
    [("train.lr=inf", "train.lr"), ("train.class_weights=[1, .nan, 1]", "train.class_weights.1")],
)
def test_non_finite_settings_are_refused(override, key, tmp_path, lits_data, medseg_cli):
    result = medseg_cli("-q", "train", training_config(tmp_path, lits_data), "--set", override)
    one_line_refusal(result, 2, key, "finite")


def test_non_finite_model_settings_are_refused(tmp_path, volume, ct_model_dir, medseg_cli):
    model = Path(shutil.copytree(ct_model_dir, tmp_path / "model"))
    config = yaml.safe_load((model / "config.yaml").read_text())
    config["preprocessing"]["intensity"]["std"] = float("nan")
    (model / "config.yaml").write_text(yaml.safe_dump(config))
    result = medseg_cli("predict", model, volume, "-o", tmp_path / "out")
    one_line_refusal(result, 2, "config.yaml", "preprocessing.intensity.std", "finite")


def test_a_nan_in_provenance_does_not_stop_a_model(tmp_path, volume, ct_model_dir, medseg_cli):
    model = Path(shutil.copytree(ct_model_dir, tmp_path / "model"))
    config = yaml.safe_load((model / "config.yaml").read_text())
    config["provenance"]["validation"] = {"val/hd95/liver": float("nan")}
    (model / "config.yaml").write_text(yaml.safe_dump(config))
    result = medseg_cli("predict", model, volume, "-o", tmp_path / "out")
    assert result.code == 0, result.out + result.err


def test_a_diverging_loss_stops_training_naming_the_epoch(
    tmp_path, lits_data, medseg_cli, monkeypatch
):
    from medseg.pipelines.training import losses

    plain = losses.DeepSupervisionLoss.forward

    def diverging(self, outputs, target):
        return plain(self, outputs, target) * float("inf")

    monkeypatch.setattr(losses.DeepSupervisionLoss, "forward", diverging)
    result = medseg_cli("-q", "train", training_config(tmp_path, lits_data))
    one_line_refusal(result, 2, "epoch 1, step 1", "diverged")
    assert not (tmp_path / "run" / "checkpoint_last.pt").exists()
    assert not (tmp_path / "run" / "model").exists()


# ---- 8: complex voxels are refused by name ----


def test_complex_images_are_refused_by_name(tmp_path, volume, ct_model_dir, medseg_cli):
    data = np.asarray(nib.load(volume).dataobj).astype(np.complex64) * (1 + 1j)
    complex_file = tmp_path / "in" / "complex.nii"
    complex_file.parent.mkdir()
    nib.save(nib.Nifti1Image(data, nib.load(volume).affine), complex_file)
    shutil.copy(volume, tmp_path / "in" / "real.nii")
    result = medseg_cli("predict", ct_model_dir, tmp_path / "in", "-o", tmp_path / "out")
    assert result.code == 1, result.out + result.err
    assert "complex.nii" in result.out and "complex voxel type complex64" in result.out
    assert (tmp_path / "out" / "real.nii.gz").is_file()
    assert not (tmp_path / "out" / "complex.nii.gz").exists()


# ---- 9: a training patch beyond memory is refused before training ----


def test_a_patch_beyond_memory_is_refused_with_the_largest_that_fits(
    tmp_path, lits_data, medseg_cli, monkeypatch
):
    from medseg.pipelines import resources
    from medseg.pipelines.training import plan as rules

    monkeypatch.setattr(resources, "available_memory", lambda: 2**30)
    config = training_config(tmp_path, lits_data)
    result = medseg_cli("-q", "train", config, "--set", "transforms.patch_size=[256, 256, 256]")
    one_line_refusal(result, 2, "transforms.patch_size [256, 256, 256]", "largest patch")
    assert not (tmp_path / "run" / "checkpoint_last.pt").exists()
    suggested = [int(s) for s in result.err.split("fits is about [")[1].split("]")[0].split(",")]

    choice = rules.NetworkSpec(
        name="unetpp",
        preset="tiny",
        spatial_dims=3,
        in_channels=1,
        out_channels=3,
        options={"features": [2, 4, 8]},
    )
    options = rules.network_options(choice, suggested, [1.0, 1.0, 1.0], plan_pooling=True)
    assert rules.training_bytes(choice, options, suggested, 1) <= 2**30  # 1 volume, 1 patch


@pytest.mark.parametrize("cache", ["memory", "none"])
def test_a_cache_beyond_memory_is_refused_before_training(cache, tmp_path, medseg_cli, monkeypatch):
    from medseg.pipelines import resources

    synthesize("lits", tmp_path / "data", cases=4, shape=(64, 64, 32), seed=5)
    config = training_config(tmp_path, tmp_path / "data")
    # Four 64x64x32 cases kept at their own spacing, one channel and a label as float32:
    # 4 * 131072 * 2 * 4 bytes = 4.2 MB; a step on 16^3 patches of the tiny UNet++ fits 3 MB.
    monkeypatch.setattr(resources, "available_memory", lambda: 3_000_000)
    result = medseg_cli(
        "-q",
        "train",
        config,
        "--set",
        f"transforms.cache={cache}",
        "--set",
        "transforms.spacing=null",
    )
    if cache == "memory":
        one_line_refusal(result, 2, "transforms.cache", "disk")
    else:
        assert "transforms.cache" not in result.err, result.err
    assert not (tmp_path / "run" / "checkpoint_last.pt").exists() or cache == "none"


def test_resuming_from_a_misshapen_checkpoint_is_one_line(tmp_path, lits_data, medseg_cli):
    config = training_config(tmp_path, lits_data, epochs=1, iterations_per_epoch=1)
    assert medseg_cli("-q", "train", config).code == 0
    checkpoint = tmp_path / "run" / "checkpoint_last.pt"
    state = torch.load(checkpoint, weights_only=True)
    name = next(k for k, v in state["network"].items() if v.ndim > 1)
    state["network"][name] = wrong_shape(state["network"][name])
    torch.save(state, checkpoint)
    result = medseg_cli("-q", "train", "--resume", tmp_path / "run", "--set", "train.epochs=2")
    one_line_refusal(result, 2, "checkpoint_last.pt", name, "has shape")
