"""Coarse-to-fine inference: where its windows are the full pass's the output is the full
pass's, the box covers the structure, the rest is background, and it falls back to the full
pass when the coarse pass finds nothing or the structure goes on beyond the box;
``medseg predict --coarse-to-fine`` writes the same kind of label map."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg.datasets.base import LabelScheme
from medseg.pipelines.inference import sliding_window_predict
from medseg.pipelines.prediction.coarse_to_fine import (
    CoarseToFine,
    foreground,
    main_components,
    window_aligned_range,
)
from medseg.transforms.labels import probabilities

SCHEME = LabelScheme("classes", ("background", "organ"), ((0,), (1,)))
ROI = [16, 16, 16]
OVERLAP = 0.5
SHAPE = (64, 56, 48)  # MONAI's grid of 16-voxel windows at step 8 fits each axis exactly
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


def _same_windows(crop: slice, size: int) -> slice:
    """The voxels of ``crop`` every full-pass window over which lies inside ``crop``."""
    starts = range(0, size - ROI[0] + 1, ROI[0] // 2)
    inside = [
        voxel
        for voxel in range(crop.start, crop.stop)
        if all(
            crop.start <= s and s + ROI[0] <= crop.stop for s in starts if s <= voxel < s + ROI[0]
        )
    ]
    return slice(inside[0], inside[-1] + 1)


def test_where_the_windows_are_the_full_passs_so_is_the_output():
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
    same = tuple(_same_windows(crop, size) for crop, size in zip(region.crop, SHAPE, strict=True))
    assert all(part.stop > part.start for part in same)
    torch.testing.assert_close(result[(slice(None), *same)], full[(slice(None), *same)])
    outside = torch.ones(SHAPE, dtype=torch.bool)
    outside[region.crop] = False
    assert (result[0][outside] == 1).all() and (result[1][outside] == 0).all()
    labels, reference = result.argmax(0), full.argmax(0)
    assert torch.equal(labels, reference)


def _bright(image: torch.Tensor) -> torch.Tensor:
    """Probabilities ``(2, *s)`` of ``(1, 1, *s)``: class 1 wherever a voxel is above 0.5."""
    organ = (image[0, 0] > 0.5).float()
    return torch.stack([1 - organ, organ])


def test_a_structure_going_on_beyond_the_box_falls_back_to_the_full_pass():
    image = torch.zeros(1, 1, *SHAPE)
    image[(0, 0, *ORGAN)] = 1.0
    # one voxel thin: downsampling fades it below 0.5, so only the fine pass sees it
    image[0, 0, 30:, 35, 13] = 1.0
    calls: list[tuple[int, ...]] = []

    def predict(part: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(part.shape[2:]))
        return _bright(part)

    result, region = CoarseToFine(factor=2, margin_mm=2.0).probabilities(
        image, predict, SCHEME, ROI, OVERLAP, [1.0, 1.0, 1.0]
    )
    assert region is None
    assert calls[0] == (32, 28, 24) and calls[-1] == SHAPE and len(calls) == 3
    assert torch.equal(result, _bright(image))


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
    ("size", "low", "high", "expected"),
    [
        # 64 voxels, windows of 16 at overlap 0.5: starts 0, 8, ..., 48
        (64, 0, 1, (0, 16)),
        (64, 17, 18, (16, 32)),
        (64, 10, 40, (8, 40)),
        (64, 63, 64, (48, 64)),
        # 60 voxels: starts 0, 8, ..., 40 and the last window moved back to 44
        (60, 41, 60, (40, 60)),
        (60, 50, 60, (44, 60)),
        (12, 3, 4, (0, 12)),  # an axis shorter than the window is taken whole
    ],
)
def test_window_aligned_range_takes_the_fewest_windows_of_monais_grid(size, low, high, expected):
    assert window_aligned_range(size, 16, 0.5, low, high) == expected


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
    mask = torch.zeros(30, 30, 30, dtype=torch.bool)
    mask[2:8, 2:8, 2:8] = True  # one structure
    mask[20:25, 20:26, 20:26] = True  # another of a similar size
    mask[28, 28, 0] = True  # a false-positive speck
    kept = main_components(mask)
    assert kept[2:8, 2:8, 2:8].all() and kept[20:25, 20:26, 20:26].all()
    assert not kept[28, 28, 0]


def test_a_small_structure_is_judged_against_its_own_kind_not_its_neighbour():
    scheme = LabelScheme("classes", ("background", "liver", "gallbladder"), ((0,), (1,), (2,)))
    labels = torch.zeros(30, 30, 30, dtype=torch.long)
    labels[2:22, 2:22, 2:22] = 1  # a large organ
    labels[25:27, 25:27, 25:27] = 2  # a small one of another kind, far from it
    labels[28, 0, 28] = 1  # a speck of the large one's kind
    kept = foreground(torch.nn.functional.one_hot(labels, 3).movedim(-1, 0).float(), scheme)
    assert kept[2:22, 2:22, 2:22].all() and kept[25:27, 25:27, 25:27].all()
    assert not kept[28, 0, 28]


def test_what_the_postprocessing_removes_places_no_box():
    from medseg.pipelines.model_dir import Postprocessing

    organ = torch.zeros(30, 30, 30)
    organ[2:12, 2:12, 2:12] = 1.0  # the organ
    organ[20:26, 20:26, 20:26] = 1.0  # a false positive a fifth its size: not a speck
    probability = torch.stack([1 - organ, organ])
    assert foreground(probability, SCHEME)[20:26, 20:26, 20:26].all()
    kept = foreground(probability, SCHEME, Postprocessing(largest_component=["organ"]), 0.001)
    assert kept[2:12, 2:12, 2:12].all() and not kept[20:26, 20:26, 20:26].any()
