"""Coarse-to-fine inference: inside its box the output is the full pass's, the box covers
the structure, the rest is background, and it falls back to the full pass when the coarse
pass finds nothing; ``medseg predict --coarse-to-fine`` writes the same kind of label map."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg.datasets.base import LabelScheme
from medseg.pipelines.inference import sliding_window_predict
from medseg.pipelines.prediction.coarse_to_fine import CoarseToFine, window_aligned_range
from medseg.transforms.labels import probabilities

SCHEME = LabelScheme("classes", ("background", "organ"), ((0,), (1,)))
ROI = [16, 16, 16]
OVERLAP = 0.5
SHAPE = (64, 56, 48)
# the organ: a block well inside the volume, a small part of it
ORGAN = (slice(20, 30), slice(30, 42), slice(8, 20))


def _detector() -> torch.nn.Module:
    """A real convolutional network whose class 1 is 'the 3x3x3 mean is bright': a window's
    zero padding changes its output near the window's faces, so which windows are blended
    where shows in the result."""
    torch.manual_seed(0)
    network = torch.nn.Conv3d(1, 2, 3, padding=1)
    with torch.no_grad():
        network.weight.zero_()
        network.weight[1] = 1 / 27 + 0.01 * torch.randn(1, 3, 3, 3)
        network.bias.copy_(torch.tensor([0.0, -0.5]))
    return network.eval()


def _image() -> torch.Tensor:
    image = torch.zeros(1, 1, *SHAPE)
    image[(0, 0, *ORGAN)] = 1.0
    return image + 0.05 * torch.randn(image.shape, generator=torch.Generator().manual_seed(1))


def _predict(network: torch.nn.Module, calls: list[tuple[int, ...]]):
    def predict(image: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(image.shape[2:]))
        logits = sliding_window_predict(network, image, roi_size=ROI, overlap=OVERLAP)
        return probabilities(logits, SCHEME)[0]

    return predict


def test_inside_the_box_equals_the_full_pass_and_the_box_covers_the_organ():
    network, image, calls = _detector(), _image(), []
    full = _predict(network, [])(image)
    method = CoarseToFine(factor=2, margin_mm=2.0)
    result, region = method.probabilities(
        image, _predict(network, calls), SCHEME, ROI, OVERLAP, [1.0, 1.0, 1.0]
    )
    assert region is not None
    assert calls[0] == (32, 28, 24)  # the coarse pass runs on the volume halved per axis
    assert calls[1] == tuple(r.stop - r.start for r in region.crop)
    share = np.prod(calls[1]) / np.prod(SHAPE)
    assert share < 0.5, region
    for box, crop, organ in zip(region.box, region.crop, ORGAN, strict=True):
        assert crop.start <= box.start <= organ.start and organ.stop <= box.stop <= crop.stop
    inside = (slice(None), *region.box)
    torch.testing.assert_close(result[inside], full[inside], rtol=0, atol=1e-6)
    outside = torch.ones(SHAPE, dtype=torch.bool)
    outside[region.crop] = False
    assert (result[0][outside] == 1).all() and (result[1][outside] == 0).all()
    labels, reference = result.argmax(0), full.argmax(0)
    assert torch.equal(labels, reference)


def test_nothing_found_falls_back_to_the_full_pass():
    network, calls = _detector(), []
    image = torch.zeros(1, 1, *SHAPE)
    method = CoarseToFine()
    result, region = method.probabilities(
        image, _predict(network, calls), SCHEME, ROI, OVERLAP, [1.0, 1.0, 1.0]
    )
    assert region is None
    assert calls == [(32, 28, 24), SHAPE]
    torch.testing.assert_close(result, _predict(network, [])(image))


@pytest.mark.parametrize(
    ("low", "high", "expected"), [(0, 1, (0, 16)), (17, 18, (8, 32)), (63, 64, (48, 64))]
)
def test_window_aligned_range_follows_monais_grid(low, high, expected):
    # 64 voxels, windows of 16 at overlap 0.5: starts 0, 8, ..., 48
    assert window_aligned_range(64, 16, 0.5, low, high) == expected
    assert window_aligned_range(12, 16, 0.5, 3, 4) == (0, 12)


def test_predict_coarse_to_fine_writes_a_label_map_on_the_input_grid(
    medseg_cli, ct_model_dir, tmp_path
):
    from medseg.datasets.synthetic import write_lits

    (tmp_path / "in").mkdir()
    (volume,) = write_lits(tmp_path / "in", 1, (48, 40, 32), seed=0)
    volume.with_name("segmentation-0.nii").unlink()
    result = medseg_cli("predict", ct_model_dir, volume, "-o", tmp_path / "out", "--coarse-to-fine")
    assert result.code == 0, result.err
    written = nib.load(tmp_path / "out" / "volume-0.nii.gz")
    source = nib.load(volume)
    assert written.shape == source.shape
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-5)


def test_a_stray_speck_does_not_stretch_the_box():
    from medseg.pipelines.prediction.coarse_to_fine import main_components

    mask = torch.zeros(30, 30, 30, dtype=torch.bool)
    mask[2:8, 2:8, 2:8] = True  # one structure
    mask[20:25, 20:26, 20:26] = True  # another of a similar size
    mask[28, 28, 0] = True  # a false-positive speck
    kept = main_components(mask)
    assert kept[2:8, 2:8, 2:8].all() and kept[20:25, 20:26, 20:26].all()
    assert not kept[28, 28, 0]
