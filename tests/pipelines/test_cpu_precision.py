"""Precision by what the CPU offers: bf16 on the CPU only where it runs natively (AMX or
AVX-512 BF16), never fp16; ``auto`` picks bf16 there only for models whose labels were
measured to survive it."""

from __future__ import annotations

import pytest
import torch

from medseg.errors import ConfigError
from medseg.pipelines.cpu import CpuFeatures, cpu_features
from medseg.pipelines.inference import resolve_precision
from medseg.pipelines.model_dir import open_model

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


def test_cpu_bf16_follows_this_cpu_and_auto_stays_fp32_without_a_model():
    assert resolve_precision("auto", CPU) is None
    if cpu_features().native_bf16:
        assert resolve_precision("bf16", CPU) is torch.bfloat16
    else:
        with pytest.raises(ConfigError, match="AMX or AVX-512 BF16"):
            resolve_precision("bf16", CPU)
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", CPU)


def with_agreement(config, agreement):
    inference = config.inference.model_copy(update={"bf16_agreement": agreement})
    return config.model_copy(update={"inference": inference})


@pytest.mark.parametrize(
    ("agreements", "backend", "bf16"),
    [
        ([None], "auto", False),  # not measured (untrained, or trained before it was)
        ([0.998], "auto", False),
        ([0.999], "auto", True),
        ([1.0], "openvino", True),
        ([1.0], "onnxruntime", False),  # fp32 kernels only
        ([1.0, None], "auto", False),  # an ensemble needs every member shown
        ([], "auto", False),
    ],
)
@pytest.mark.parametrize("native", [True, False])
def test_auto_runs_bf16_on_the_cpu_only_where_the_model_was_shown_to_survive_it(
    monkeypatch, brats_model_dir, agreements, backend, bf16, native
):
    flags = frozenset({"avx2", "avx512f", *(["avx512_bf16"] if native else [])})
    monkeypatch.setattr("medseg.pipelines.cpu.cpu_features", lambda: CpuFeatures("AVX512", flags))
    config, _ = open_model(brats_model_dir)
    configs = [with_agreement(config, agreement) for agreement in agreements]
    expected = torch.bfloat16 if bf16 and native else None
    assert resolve_precision("auto", CPU, configs, backend) is expected


@pytest.mark.parametrize("network", ["swin_unetr", "hdenseunet", "att_swinunet"])
def test_auto_keeps_fp32_on_the_cpu_for_networks_whose_bf16_was_not_measured_faster(
    monkeypatch, brats_model_dir, network
):
    flags = frozenset({"avx2", "avx512f", "avx512_bf16"})
    monkeypatch.setattr("medseg.pipelines.cpu.cpu_features", lambda: CpuFeatures("AVX512", flags))
    config, _ = open_model(brats_model_dir)
    other = with_agreement(config, 1.0)
    other = other.model_copy(update={"network": other.network.model_copy(update={"name": network})})
    assert resolve_precision("auto", CPU, [with_agreement(config, 1.0)]) is torch.bfloat16
    assert resolve_precision("auto", CPU, [other]) is None
