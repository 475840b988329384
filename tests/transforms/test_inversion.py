"""Predictions land on the input's exact grid, whatever its orientation, spacing,
obliquity or header codes: the whole predict path (preprocessing, sliding window,
``Invertd``, writer) run with a voxel-wise network whose answer is known."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg.datasets.base import Case, LabelScheme
from medseg.datasets.image_io import write_label_like
from medseg.pipelines.model_dir import InferenceSpec, ModelConfig, NetworkSpec
from medseg.pipelines.prediction.segmenter import Segmenter
from medseg.transforms.presets import Preprocessing

NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"
SCHEME = LabelScheme(
    mode="regions", names=("object",), values=((1,),), paint=(1,), paint_order=(0,)
)
# CT intensities: air outside the body, soft tissue, and a bright object that is the label.
AIR, TISSUE, OBJECT = -1000.0, 0.0, 500.0
CT_STATS = {"window_low": -1000.0, "window_high": 1000.0, "mean": 0.0, "std": 100.0}


class Threshold(torch.nn.Module):
    """A 'network' whose logit is positive exactly where the normalised image exceeds 2.5."""

    def __init__(self, spatial_dims: int) -> None:
        super().__init__()
        self.conv = (torch.nn.Conv2d if spatial_dims == 2 else torch.nn.Conv3d)(1, 1, 1)
        torch.nn.init.ones_(self.conv.weight)
        torch.nn.init.constant_(self.conv.bias, -2.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def segmenter(
    spatial_dims: int, spacing=None, crop=True, patch=(16, 16, 16), network_dims=None
) -> Segmenter:
    network_dims = network_dims or spatial_dims
    patch = list(patch[:network_dims])
    config = ModelConfig(
        network=NetworkSpec(
            name="threshold",
            preset="tiny",
            spatial_dims=network_dims,
            in_channels=1,
            out_channels=1,
        ),
        preprocessing=Preprocessing(
            layout="folder",
            modality="ct",
            channels=["ct"],
            spatial_dims=spatial_dims,
            spacing=spacing,
            foreground_crop=crop,
            patch_size=patch,
            intensity=CT_STATS,
        ),
        labels=SCHEME.to_dict(),
        inference=InferenceSpec(roi_size=patch, overlap=0.25),
    )
    return Segmenter([(config, Threshold(network_dims))], torch.device("cpu"))


def phantom(shape, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like image (air, body, object) and the object's label, both in file index order."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    body = sum(g**2 for g in grid) < 0.8
    centre = rng.uniform(-0.3, 0.3, len(shape))
    label = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) < 0.12
    label &= grid[0] > centre[0] - 0.2  # cut the ball so a flipped answer would not match
    image = np.where(body, TISSUE, AIR)
    image[label] = OBJECT
    return image.astype(np.int16), label.astype(np.uint8)


def oblique_affine(spacing, degrees=20.0, origin=(-30.0, 12.0, 5.0)) -> np.ndarray:
    angle = np.deg2rad(degrees)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


AFFINES = {
    "RAS": np.diag([1.0, 1.0, 1.0, 1.0]),
    "LPS": np.array([[-1.0, 0, 0, 20], [0, -1.0, 0, 30], [0, 0, 1.0, -4], [0, 0, 0, 1]]),
    "anisotropic": np.diag([0.7, 0.7, 3.0, 1.0]),
    "oblique": oblique_affine((0.8, 0.9, 2.0)),
    "permuted": np.array([[0, 0, 1.5, 0], [-1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]]),
}


def write_nifti(
    path: Path, data: np.ndarray, affine: np.ndarray, qform_code=1, sform_code=2
) -> Path:
    image = nib.Nifti1Image(data, affine)
    image.set_qform(affine, code=qform_code)
    image.set_sform(affine, code=sform_code)
    nib.save(image, path)
    return path


def predict_file(tool: Segmenter, source: Path, target: Path) -> nib.Nifti1Image:
    labels = tool.segment(Case(source.name.split(".")[0], (source,)))
    write_label_like(source, labels, target)
    return nib.load(target)


def assert_same_grid(output: nib.Nifti1Image, source: nib.Nifti1Image) -> None:
    assert output.shape == source.shape[: len(output.shape)]
    np.testing.assert_allclose(output.affine, source.affine, atol=1e-5)
    assert nib.aff2axcodes(output.affine) == nib.aff2axcodes(source.affine)
    assert int(output.header["qform_code"]) == int(source.header["qform_code"])
    assert int(output.header["sform_code"]) == int(source.header["sform_code"])
    assert output.get_data_dtype() == np.uint8


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_label_round_trip_is_exact_without_resampling(tmp_path, name):
    image, label = phantom((30, 26, 18), seed=len(name))
    source = write_nifti(tmp_path / f"{name}.nii.gz", image, AFFINES[name])
    output = predict_file(segmenter(3), source, tmp_path / "out.nii.gz")
    assert_same_grid(output, nib.load(source))
    np.testing.assert_array_equal(np.asarray(output.dataobj), label)


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_resampled_round_trip_lands_on_the_input_grid(tmp_path, name):
    image, label = phantom((40, 36, 20), seed=3)
    source = write_nifti(tmp_path / f"{name}.nii.gz", image, AFFINES[name])
    output = predict_file(segmenter(3, spacing=[1.2, 1.2, 1.6]), source, tmp_path / "out.nii.gz")
    assert_same_grid(output, nib.load(source))
    predicted = np.asarray(output.dataobj).astype(bool)
    dice = 2 * (predicted & label.astype(bool)).sum() / (predicted.sum() + label.sum())
    assert dice > 0.85


def test_two_dimensional_network_segments_a_volume_slice_by_slice(tmp_path):
    image, label = phantom((30, 26, 9), seed=4)
    source = write_nifti(tmp_path / "volume.nii.gz", image, AFFINES["oblique"])
    output = predict_file(segmenter(3, network_dims=2), source, tmp_path / "out.nii.gz")
    assert_same_grid(output, nib.load(source))
    np.testing.assert_array_equal(np.asarray(output.dataobj), label)


def test_two_dimensional_image_round_trip(tmp_path):
    image, label = phantom((40, 34), seed=5)
    source = write_nifti(tmp_path / "slice.nii.gz", image, np.diag([-0.5, 0.5, 1.0, 1.0]))
    output = predict_file(segmenter(2, patch=(16, 16)), source, tmp_path / "out.nii.gz")
    assert_same_grid(output, nib.load(source))
    np.testing.assert_array_equal(np.asarray(output.dataobj), label)


def test_header_codes_and_scaling_of_the_input_are_respected(tmp_path):
    image, label = phantom((20, 22, 12), seed=2)
    scaled = nib.Nifti1Image(image.astype(np.float32) / 2, AFFINES["LPS"])
    scaled.set_data_dtype(np.int16)
    scaled.header.set_slope_inter(2.0, 0.0)
    scaled.set_qform(AFFINES["LPS"], code=0)
    scaled.set_sform(AFFINES["LPS"], code=4)
    nib.save(scaled, tmp_path / "scaled.nii")
    output = predict_file(segmenter(3), tmp_path / "scaled.nii", tmp_path / "out.nii.gz")
    assert_same_grid(output, nib.load(tmp_path / "scaled.nii"))
    assert output.dataobj.slope == 1.0 and output.dataobj.inter == 0.0
    np.testing.assert_array_equal(np.asarray(output.dataobj), label)


@pytest.mark.parametrize(
    "name",
    ["anatomical.nii", "reoriented_anat_moved.nii", "standard.nii.gz"],
)
def test_nibabel_test_files_come_back_on_their_own_grid(tmp_path, name):
    source = NIBABEL_DATA / name
    output = predict_file(
        segmenter(3, crop=False, patch=(8, 8, 8)), source, tmp_path / "out.nii.gz"
    )
    assert_same_grid(output, nib.load(source))
    expected = (np.asarray(nib.load(source).dataobj, dtype=np.float32) / CT_STATS["std"]) > 2.5
    np.testing.assert_array_equal(np.asarray(output.dataobj).astype(bool), expected)


def test_four_dimensional_input_to_a_single_channel_model_is_refused(tmp_path):
    from medseg.errors import CaseError

    source = NIBABEL_DATA / "example4d.nii.gz"
    with pytest.raises(CaseError, match=r"example4d\.nii\.gz: has 2 channel"):
        segmenter(3).segment(Case("example4d", (source,)))


def test_nan_voxels_are_refused_naming_the_file(tmp_path):
    from medseg.errors import CaseError

    source = NIBABEL_DATA / "resampled_anat_moved.nii"  # nibabel ships it with 153 NaN voxels
    with pytest.raises(CaseError, match=r"resampled_anat_moved\.nii: 153 NaN or infinite voxels"):
        segmenter(3, crop=False, patch=(8, 8, 8)).segment(Case("moved", (source,)))
