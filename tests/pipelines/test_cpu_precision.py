"""Precision by what the CPU offers: bf16 on the CPU only where it runs natively (AMX or
AVX-512 BF16), never fp16; runtime backends refuse an autocast precision."""

from __future__ import annotations

import pytest
import torch

from medseg.errors import ConfigError
from medseg.pipelines.cpu import CpuFeatures, cpu_features
from medseg.pipelines.inference import resolve_precision
from medseg.pipelines.model_dir import open_model
from medseg.pipelines.prediction.backends import prepare_network

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("flags", "native"),
    [
        ({"avx2"}, False),
        ({"avx2", "avx512f"}, False),
        ({"avx2", "avx512f", "avx512_bf16"}, True),
        ({"amx_tile", "amx_bf16"}, True),
    ],
)
def test_native_bf16_needs_amx_or_avx512_bf16(flags, native):
    assert CpuFeatures("AVX2", frozenset(flags)).native_bf16 is native


def test_cpu_bf16_follows_this_cpu_and_auto_stays_fp32():
    assert resolve_precision("auto", CPU) is None
    if cpu_features().native_bf16:
        assert resolve_precision("bf16", CPU) is torch.bfloat16
    else:
        with pytest.raises(ConfigError, match="AMX or AVX-512 BF16"):
            resolve_precision("bf16", CPU)
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", CPU)


def test_runtime_backend_refuses_an_autocast_precision(brats_model_dir):
    config, network = open_model(brats_model_dir)
    with pytest.raises(ConfigError, match="--precision applies to torch"):
        prepare_network(config, network, CPU, "openvino", precision=torch.bfloat16)
