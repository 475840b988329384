"""Multi-node training: two torchrun launchers meeting through c10d rendezvous on loopback
train the same weights as one process with the same global batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

MEDSEG = str(Path(sys.executable).with_name("medseg"))
# One thread and the loopback interface in every process: the same sums in the same order,
# and nothing leaves the machine.
ENVIRONMENT = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_config(folder: Path, root: Path) -> Path:
    """One epoch of four steps of global batch 2 on a tiny UNet++. Cross-entropy is a mean
    over voxels, so two half-batches averaged across ranks equal the whole batch; SGD moves
    a weight by its gradient, where AdamW would blow the rounding noise of the zero
    gradients of biases before instance norm up to whole steps."""
    config = {
        "data": {"layout": "brats", "root": str(root), "folds": 5},
        "network": {"name": "unetpp", "preset": "tiny", "options": {"features": [4, 8, 16]}},
        "transforms": {"patch_size": [16, 16, 16], "samples_per_case": 2},
        "train": {"epochs": 1, "batch_size": 2, "lr": 0.01, "loss": "ce", "optimizer": "sgd"},
        "infer": {"overlap": 0.25, "sw_batch_size": 4},
        "output": str(folder / "run"),
        "tracking": {"enabled": False},
    }
    folder.mkdir(parents=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_two_nodes_train_the_single_process_weights(tmp_path):
    from medseg.datasets.synthetic import synthesize

    root = tmp_path / "data"
    synthesize("brats", root, cases=5, shape=(32, 32, 24), seed=11)
    single, nodes = write_config(tmp_path / "single", root), write_config(tmp_path / "nodes", root)
    endpoint = f"127.0.0.1:{free_port()}"
    launchers = [
        subprocess.Popen(
            [
                sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
                "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint,
                "--rdzv-id", "medseg-two-nodes", "--node-rank", str(node_rank),
                "--local-addr", "127.0.0.1", "-m", "medseg", "train", str(nodes),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=os.environ | ENVIRONMENT,
        )
        for node_rank in (0, 1)
    ]  # fmt: skip
    alone = subprocess.run(
        [MEDSEG, "train", str(single)],
        capture_output=True,
        text=True,
        env=os.environ | ENVIRONMENT,
        timeout=240,
    )
    assert alone.returncode == 0, alone.stderr[-2000:]
    for launcher in launchers:
        try:
            _, errors = launcher.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for other in launchers:
                other.kill()
            pytest.fail("the two-node run did not finish in 4 minutes")
        assert launcher.returncode == 0, errors[-2000:]
    expected = load_file(tmp_path / "single" / "run" / "model" / "weights.safetensors")
    trained = load_file(tmp_path / "nodes" / "run" / "model" / "weights.safetensors")
    assert expected.keys() == trained.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(trained[name], tensor, rtol=1e-4, atol=1e-5, msg=name)
