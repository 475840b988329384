"""``medseg predict --backend``: ONNX Runtime and OpenVINO give torch's labels from
medseg's own cached export, never writing to the model directory; a missing runtime or an
unknown backend is one clear line and exit 2; ``auto`` falls back to torch, saying why."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg.datasets import discover
from medseg.errors import ConfigError
from medseg.pipelines.cpu import cpu_features
from medseg.pipelines.model_dir import open_model
from medseg.pipelines.prediction import backends
from medseg.pipelines.prediction.backends import (
    RuntimeNetwork,
    export_cache_dir,
    export_key,
    prepare_network,
)
from medseg.pipelines.prediction.predict import predict

RUNTIMES = ("onnxruntime", "openvino")


@pytest.fixture(scope="module")
def cache_home(tmp_path_factory):
    """XDG_CACHE_HOME for this module: exports go to a fresh folder, not the user's."""
    folder = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(folder))
        yield folder


@pytest.fixture(scope="module")
def case_image(brats_phantoms) -> list[str]:
    """One BraTS case folder (4 channels)."""
    return [str(discover("brats", brats_phantoms["test"]).cases[0].image[0].parent)]


def labels_with(backend: str, model: Path, image: list[str], output: Path) -> np.ndarray:
    report = predict(model, image, output, backend=backend, show_progress=False)
    assert report.failed == 0, report.cases
    return np.asarray(nib.load(report.cases[0].output).dataobj)


@pytest.fixture(scope="module")
def torch_labels(cache_home, brats_model_dir, case_image, tmp_path_factory) -> np.ndarray:
    return labels_with("torch", brats_model_dir, case_image, tmp_path_factory.mktemp("torch"))


@pytest.mark.parametrize("backend", RUNTIMES)
def test_runtime_labels_agree_with_torch(
    backend, cache_home, brats_model_dir, case_image, torch_labels, tmp_path
):
    before = {path: path.stat().st_mtime_ns for path in brats_model_dir.rglob("*")}
    labels = labels_with(backend, brats_model_dir, case_image, tmp_path)
    assert labels.shape == torch_labels.shape
    assert (labels == torch_labels).mean() >= 0.999
    after = {path: path.stat().st_mtime_ns for path in brats_model_dir.rglob("*")}
    assert after == before  # the export went to the cache, not into the model directory


def test_export_is_cached_by_the_weights(cache_home, brats_model_dir):
    config, network = open_model(brats_model_dir)
    first = prepare_network(config, network, torch.device("cpu"), "onnxruntime")
    exports = sorted(export_cache_dir().glob("*/model.onnx"))
    assert isinstance(first, RuntimeNetwork) and len(exports) == 1
    stamp = exports[0].stat().st_mtime_ns
    prepare_network(config, network, torch.device("cpu"), "openvino")
    assert exports[0].stat().st_mtime_ns == stamp  # reused, not exported again

    key = export_key(config, network, None)
    assert exports[0].parent.name == key
    with torch.no_grad():
        network.heads[-1].bias.add_(1.0)
    assert export_key(config, network, None) != key  # new weights, new export
    assert export_key(config, network, 1) != export_key(config, network, None)
    # batch norm's step counter is a 0-dim integer buffer (H-DenseUNet, 2D UNet++)
    assert len(export_key(config, torch.nn.BatchNorm3d(2), None)) == 64


def test_missing_runtime_is_one_line_and_exit_2(
    medseg_cli, monkeypatch, brats_model_dir, case_image, tmp_path
):
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if it were not installed
    result = medseg_cli(
        "predict", brats_model_dir, *case_image, "--output", tmp_path, "--backend", "openvino"
    )
    assert result.code == 2
    assert "pip install 'medseg[fast]'" in result.err + result.out
    assert not list(tmp_path.glob("*.nii.gz"))


def test_unknown_backend_exits_2(medseg_cli, brats_model_dir, case_image, tmp_path):
    result = medseg_cli(
        "predict", brats_model_dir, *case_image, "--output", tmp_path, "--backend", "tensorrt"
    )
    assert result.code == 2
    assert "backend 'tensorrt'" in result.err + result.out


def test_auto_falls_back_to_torch_and_says_why(monkeypatch, caplog, brats_model_dir):
    monkeypatch.setitem(backends.AUTO_BACKEND, "unetpp", "openvino")
    monkeypatch.setattr(backends, "AUTO_TORCH_PRESETS", frozenset())
    monkeypatch.setitem(sys.modules, "openvino", None)
    config, network = open_model(brats_model_dir)
    with caplog.at_level(logging.INFO, logger="medseg.pipelines.prediction.backends"):
        prepared = prepare_network(config, network, torch.device("cpu"), "auto")
    assert not isinstance(prepared, RuntimeNetwork)
    assert "openvino is not installed; running torch" in caplog.text


def test_unwritable_export_cache_is_one_line_and_auto_runs_torch(
    monkeypatch, caplog, tmp_path, brats_model_dir
):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would go\n")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    config, network = open_model(brats_model_dir)
    with pytest.raises(ConfigError, match=r"not-a-folder/medseg/exports/.*XDG_CACHE_HOME") as error:
        prepare_network(config, network, torch.device("cpu"), "openvino")
    assert "\n" not in str(error.value)

    monkeypatch.setitem(backends.AUTO_BACKEND, "unetpp", "openvino")
    monkeypatch.setattr(backends, "AUTO_TORCH_PRESETS", frozenset())
    with caplog.at_level(logging.INFO, logger="medseg.pipelines.prediction.backends"):
        prepared = prepare_network(config, network, torch.device("cpu"), "auto")
    assert not isinstance(prepared, RuntimeNetwork)
    assert "cannot write the openvino export there" in caplog.text
    assert blocker.read_text() == "a file where the cache folder would go\n"


def test_auto_runs_a_tiny_model_on_openvino_once_its_export_is_cached(
    monkeypatch, caplog, cache_home, brats_model_dir
):
    monkeypatch.setitem(backends.AUTO_BACKEND, "unetpp", "openvino")
    config, network = open_model(brats_model_dir)
    assert config.network.preset in backends.AUTO_TORCH_PRESETS
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home / "empty"))
    with caplog.at_level(logging.DEBUG, logger="medseg.pipelines.prediction.backends"):
        first = prepare_network(config, network, torch.device("cpu"), "auto")
    assert not isinstance(first, RuntimeNetwork)
    assert "`--backend openvino` makes its export once" in caplog.text
    assert not (cache_home / "empty").exists()  # auto did not export by itself

    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))
    prepare_network(config, network, torch.device("cpu"), "openvino")  # cached by the module
    later = prepare_network(config, network, torch.device("cpu"), "auto")
    assert isinstance(later, RuntimeNetwork) and later.backend == "openvino"


@pytest.mark.skipif(not cpu_features().native_bf16, reason="this CPU has no native bf16")
def test_openvino_runs_bf16_when_asked_and_stays_close_to_torch(cache_home, brats_model_dir):
    config, network = open_model(brats_model_dir)
    fp32 = prepare_network(config, network, torch.device("cpu"), "openvino")
    bf16 = prepare_network(
        config, network, torch.device("cpu"), "openvino", precision=torch.bfloat16
    )
    window = torch.randn(
        (2, 4, *config.inference.roi_size), generator=torch.Generator().manual_seed(1)
    )
    with torch.inference_mode():
        expected = network.eval()(window)
    reduced, full = bf16(window), fp32(window)
    assert float((full - expected).abs().max()) <= 1e-4
    assert float((reduced - expected).abs().max()) > 1e-4  # bf16 did run
    relative = float((reduced - expected).square().mean().sqrt() / expected.square().mean().sqrt())
    assert relative <= backends.BF16_RUNTIME_TOLERANCE


def test_onnxruntime_refuses_bf16(cache_home, brats_model_dir):
    config, network = open_model(brats_model_dir)
    with pytest.raises(ConfigError, match="backend onnxruntime runs fp32"):
        prepare_network(
            config, network, torch.device("cpu"), "onnxruntime", precision=torch.bfloat16
        )


def test_a_passed_runtime_check_is_recorded_and_not_run_again(
    monkeypatch, cache_home, brats_model_dir
):
    config, network = open_model(brats_model_dir)
    prepare_network(config, network, torch.device("cpu"), "openvino")
    records = sorted(export_cache_dir().glob("*/checked-openvino-*"))
    assert records and records[0].read_bytes() == b""

    def fail(*args, **kwargs):
        raise AssertionError("checked again")

    monkeypatch.setattr(backends, "_check_against_torch", fail)
    again = prepare_network(config, network, torch.device("cpu"), "openvino")
    assert isinstance(again, RuntimeNetwork)
    for record in export_cache_dir().glob("*/checked-onnxruntime-*"):
        record.unlink()  # made by earlier tests here
    with pytest.raises(AssertionError, match="checked again"):  # each runtime has its own
        prepare_network(config, network, torch.device("cpu"), "onnxruntime")
