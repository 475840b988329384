"""Batch prediction: equal to plain MONAI sliding windows, crash-safe, failure-isolating,
shardable."""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference

from medseg.datasets import discover
from medseg.pipelines.inference import WindowCount, sliding_window_predict
from medseg.pipelines.model_dir import open_model
from medseg.pipelines.prediction.predict import predict, shard
from medseg.pipelines.prediction.segmenter import Segmenter

MEDSEG = str(Path(sys.executable).with_name("medseg"))


@pytest.fixture(scope="module")
def many_cases(tmp_path_factory):
    from medseg.datasets.synthetic import synthesize

    root = tmp_path_factory.mktemp("batch")
    synthesize("brats", root, cases=6, shape=(40, 40, 32), seed=7)
    return root


@pytest.mark.parametrize("skip_empty", [False, True])
def test_prediction_equals_plain_monai_sliding_windows(brats_model_dir, brats_phantoms, skip_empty):
    config, network = open_model(brats_model_dir)
    segmenter = Segmenter([(config, network)], torch.device("cpu"))
    case = discover("brats", brats_phantoms["test"]).cases[0]
    # a margin of background, as around a body in CT, so some windows are constant
    image = torch.nn.functional.pad(segmenter.load(case)["image"][None].as_tensor(), [16] * 6)
    count = WindowCount()
    ours = sliding_window_predict(
        network,
        image,
        roi_size=[16, 16, 16],
        overlap=0.5,
        mode="gaussian",
        skip_empty=skip_empty,
        count=count,
    )
    with torch.inference_mode():
        plain = sliding_window_inference(
            image, [16, 16, 16], 2, network, overlap=0.5, mode="gaussian"
        )
    torch.testing.assert_close(ours, plain, atol=1e-5, rtol=1e-5)
    assert count.windows > 0
    assert (count.skipped > 0) == skip_empty


def test_sliding_windows_keep_no_autograd_graph():
    # With autograd on, the blended logits would hold every window's activations: memory
    # grew by about 0.2 GiB per window pair and a BraTS-size case was killed at 12 GiB.
    network = torch.nn.Conv3d(1, 2, 3, padding=1)
    logits = sliding_window_predict(network, torch.rand(1, 1, 12, 12, 12), roi_size=[8, 8, 8])
    assert not logits.requires_grad


def test_tta_and_ensemble_average_probabilities(brats_model_dir, brats_phantoms):
    config, network = open_model(brats_model_dir)
    other = copy.deepcopy(network)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.5)
    case = discover("brats", brats_phantoms["test"]).cases[0]
    single = Segmenter([(config, network)], torch.device("cpu"))
    data = single.load(case)
    once = single.infer(data, keep_probabilities=True)
    alone = Segmenter([(config, other)], torch.device("cpu"))
    second = alone.infer(alone.load(case), keep_probabilities=True)
    # Two models that disagree, so an ensemble dropping either one would fail the oracle.
    assert np.abs(once.probabilities - second.probabilities).max() > 0.1
    ensemble = Segmenter([(config, network), (config, other)], torch.device("cpu"))
    both = ensemble.infer(ensemble.load(case), keep_probabilities=True)
    oracle = (once.probabilities.astype(np.float32) + second.probabilities) / 2
    np.testing.assert_allclose(both.probabilities, oracle, atol=2e-3)
    mirroring = Segmenter([(config, network)], torch.device("cpu"), tta=True)
    mirrored = mirroring.infer(mirroring.load(case))
    assert mirrored.windows == 8 * once.windows
    assert mirrored.labels.shape == once.labels.shape


def test_corrupt_case_is_reported_and_the_rest_are_written(
    tmp_path, brats_model_dir, many_cases, medseg_cli
):
    data = tmp_path / "data"
    shutil.copytree(many_cases, data)
    broken = data / "BraTS2021_00002" / "BraTS2021_00002_t1.nii.gz"
    broken.write_bytes(b"\x1f\x8b" + os.urandom(200))  # gzip magic, garbage inside
    before = {p: p.read_bytes() for p in data.rglob("*.nii.gz")}
    result = medseg_cli("predict", brats_model_dir, data, "--output", tmp_path / "out")
    assert result.code == 1
    assert "BraTS2021_00002_t1.nii.gz" in result.out
    written = sorted(p.name for p in (tmp_path / "out").glob("*.nii.gz"))
    assert written == [f"BraTS2021_0000{i}.nii.gz" for i in (0, 1, 3, 4, 5)]
    report = json.loads((tmp_path / "out" / "predict_report.json").read_text())
    statuses = {c["case"]: c["status"] for c in report["cases"]}
    assert statuses.pop("BraTS2021_00002") == "failed"
    assert set(statuses.values()) == {"done"}
    assert {p: p.read_bytes() for p in data.rglob("*.nii.gz")} == before  # inputs untouched


def test_output_folder_may_not_be_an_input_folder(brats_model_dir, many_cases, medseg_cli):
    case_folder = many_cases / "BraTS2021_00000"
    result = medseg_cli("predict", brats_model_dir, case_folder, "--output", case_folder)
    assert result.code == 2
    assert "is an input folder" in result.err


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", [1, 4])
def test_rerun_after_sigkill_completes_the_batch_with_valid_files(
    tmp_path, brats_model_dir, many_cases, kill_after
):
    output = tmp_path / "out"
    command = [MEDSEG, "predict", str(brats_model_dir), str(many_cases), "--output", str(output)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(output.glob("BraTS*.nii.gz"))) < kill_after:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished_before = len(list(output.glob("BraTS*.nii.gz")))
    assert kill_after <= finished_before < 6
    rerun = subprocess.run(command, capture_output=True, text=True, encoding="utf-8")
    assert rerun.returncode == 0, rerun.stderr
    assert "nvImageCodec" not in rerun.stderr  # MONAI's GPU-decoder warning is noise here
    report = json.loads((output / "predict_report.json").read_text())
    assert sum(c["status"] == "skipped" for c in report["cases"]) == finished_before
    for case in discover("brats", many_cases).cases:
        written = nib.load(output / f"{case.id}.nii.gz")
        assert written.shape == nib.load(case.image[0]).shape
        assert np.asarray(written.dataobj).dtype == np.uint8
    assert not [p for p in output.iterdir() if p.name.startswith(".")]


def test_two_ranks_share_the_cases_without_gaps_or_duplicates(
    tmp_path, brats_model_dir, many_cases, monkeypatch
):
    monkeypatch.setenv("WORLD_SIZE", "2")
    shares = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        report = predict(brats_model_dir, [str(many_cases)], tmp_path / "out", show_progress=False)
        shares.append({c.case for c in report.cases})
        assert (tmp_path / "out" / f"predict_report.rank{rank}.json").is_file()
    assert not shares[0] & shares[1]
    assert shares[0] | shares[1] == {f"BraTS2021_{i:05d}" for i in range(6)}


def test_shard_is_the_identity_without_torchrun(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert shard(["a", "b", "c"]) == (["a", "b", "c"], 0, 1)


def test_probabilities_are_saved_as_float16_on_the_input_grid(
    tmp_path, brats_model_dir, many_cases
):
    case = many_cases / "BraTS2021_00001"
    predict(
        brats_model_dir, [str(case)], tmp_path / "out", save_probabilities=True, show_progress=False
    )
    saved = np.load(tmp_path / "out" / "BraTS2021_00001_probabilities.npz")
    assert saved["probabilities"].dtype == np.float16
    assert saved["probabilities"].shape == (3, 40, 40, 32)


@pytest.mark.parametrize("suffix", [".mha", ".nrrd", "nifti2"])
def test_other_formats_come_back_in_their_own_format_and_grid(tmp_path, ct_model_dir, suffix):
    import SimpleITK as sitk

    data = np.full((24, 20, 12), -1000, dtype=np.int16)
    data[4:20, 4:16, 2:10] = 60
    affine = np.array([[-0.8, 0, 0, 10], [0, -0.7, 0, 20], [0, 0, 2.0, -5], [0, 0, 0, 1]])
    if suffix == "nifti2":
        source = tmp_path / "in" / "case.nii"
        source.parent.mkdir()
        nib.save(nib.Nifti2Image(data, affine), source)
    else:
        source = tmp_path / "in" / f"case{suffix}"
        source.parent.mkdir()
        image = sitk.GetImageFromArray(data.transpose(2, 1, 0))
        image.SetSpacing((0.8, 0.7, 2.0))
        image.SetOrigin((-10.0, -20.0, -5.0))
        sitk.WriteImage(image, str(source))
    report = predict(ct_model_dir, [str(source)], tmp_path / "out", show_progress=False)
    assert report.failed == 0
    (written,) = [p for p in (tmp_path / "out").iterdir() if p.name.startswith("case")]
    if suffix == "nifti2":
        assert written.name == "case.nii.gz"
        output = nib.load(written)
        assert output.shape == data.shape
        np.testing.assert_allclose(output.affine, affine, atol=1e-5)
    else:
        assert written.name == f"case{suffix}"
        output, reference = sitk.ReadImage(str(written)), sitk.ReadImage(str(source))
        assert output.GetSize() == reference.GetSize()
        np.testing.assert_allclose(output.GetSpacing(), reference.GetSpacing(), atol=1e-6)
        np.testing.assert_allclose(output.GetOrigin(), reference.GetOrigin(), atol=1e-6)
        np.testing.assert_allclose(output.GetDirection(), reference.GetDirection(), atol=1e-6)
        assert output.GetPixelID() == sitk.sitkUInt8


def test_cpu_segmenter_runs_a_channels_last_copy_of_3d_networks(brats_model_dir):
    config, network = open_model(brats_model_dir)
    segmenter = Segmenter([(config, network)], torch.device("cpu"))
    (laid_out,) = segmenter.networks
    assert laid_out is not network
    weights = [p for p in laid_out.parameters() if p.dim() == 5]
    assert weights and all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in weights)
    assert all(p.is_contiguous() for p in network.parameters())


@pytest.mark.parametrize("layout", ["brats", "lits"])
def test_channels_inverted_together_give_what_one_by_one_gives(
    tmp_path, monkeypatch, layout, brats_model_dir, ct_model_dir
):
    from medseg.datasets.synthetic import synthesize
    from medseg.pipelines import resources

    shape = (40, 40, 32) if layout == "brats" else (48, 48, 24)
    synthesize(layout, tmp_path, cases=1, shape=shape, seed=4)
    case = discover(layout, tmp_path).cases[0]
    config, network = open_model(brats_model_dir if layout == "brats" else ct_model_dir)
    segmenter = Segmenter([(config, network)], torch.device("cpu"))
    data = segmenter.load(case)
    together = segmenter.infer(data, keep_probabilities=True)
    monkeypatch.setattr(resources, "INVERSION_GROUP_BYTES", 1)
    one_by_one = segmenter.infer(data, keep_probabilities=True)
    np.testing.assert_array_equal(together.labels, one_by_one.labels)
    np.testing.assert_array_equal(together.probabilities, one_by_one.probabilities)
    np.testing.assert_array_equal(together.affine, one_by_one.affine)


def test_inversion_groups_hold_all_channels_of_small_volumes_and_one_of_large_ones():
    from medseg.pipelines.resources import inversion_groups

    assert inversion_groups(3, 512 * 512 * 48) == [range(0, 3)]
    assert inversion_groups(3, 512 * 512 * 600) == [range(0, 1), range(1, 2), range(2, 3)]
    assert inversion_groups(2, None) == [range(0, 1), range(1, 2)]
