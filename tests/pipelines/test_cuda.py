"""CUDA paths: training learns under each mixed precision; prediction agrees with the CPU.

CI has no GPU, so these are skipped there; on a CUDA machine run
``pytest tests/pipelines/test_cuda.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml

from medseg.datasets import discover
from medseg.pipelines.model_dir import open_model
from medseg.pipelines.prediction.segmenter import Segmenter

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_training_on_cuda_learns_under_each_precision(
    tmp_path, brats_phantoms, medseg_cli, precision
):
    config = {
        "data": {"layout": "brats", "root": str(brats_phantoms["train"]), "folds": 4},
        "network": {"name": "unetpp", "preset": "tiny", "options": {"features": [8, 16, 32]}},
        "transforms": {"patch_size": [32, 32, 32], "samples_per_case": 2},
        "train": {
            "epochs": 6,
            "batch_size": 2,
            "lr": 0.01,
            "val_every": 3,
            "device": "cuda",
            "precision": precision,
        },
        "output": str(tmp_path / "run"),
        "tracking": {"enabled": False},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))

    result = medseg_cli("train", path)

    assert result.code == 0, result.err
    state = torch.load(tmp_path / "run" / "checkpoint_last.pt", weights_only=True)
    losses = [epoch["train/loss"] for epoch in state["history"]]
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < 0.8 * losses[0], losses
    assert all(torch.isfinite(w).all() for w in state["network"].values())
    # fp16 needs the gradient scaler, and a resumed run needs its scale back.
    assert bool(state["scaler"]) == (precision == "fp16")


@pytest.mark.parametrize("precision", [None, torch.float16, torch.bfloat16])
def test_cuda_segmenter_agrees_with_the_cpu(brats_model_dir, brats_phantoms, precision):
    config, network = open_model(brats_model_dir)
    case = discover("brats", brats_phantoms["test"]).cases[0]
    on_cpu = Segmenter([(config, network)], torch.device("cpu"))
    expected = on_cpu.infer(on_cpu.load(case), keep_probabilities=True)
    config, network = open_model(brats_model_dir)
    on_gpu = Segmenter([(config, network)], torch.device("cuda"), precision=precision)
    assert all(p.is_cuda for n in on_gpu.networks for p in n.parameters())

    result = on_gpu.infer(on_gpu.load(case), keep_probabilities=True)

    # fp32 on CUDA still runs cuDNN's convolutions in TF32 (PyTorch's default), so even it
    # differs from the CPU by about 1e-3.
    tolerance = 1e-2 if precision is None else 5e-2
    np.testing.assert_allclose(result.probabilities, expected.probabilities, atol=tolerance)
    np.testing.assert_array_equal(result.affine, expected.affine)
    agreement = np.mean(result.labels == expected.labels)
    assert agreement >= (0.999 if precision is None else 0.99)
