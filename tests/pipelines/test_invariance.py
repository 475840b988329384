"""The same model gives the same labels for the same anatomy however the file presents it:
exact-zero or low-noise background, another orientation or axis order, another intensity
scale, half the voxel size. Shown on real MRI with the model the real-image learning test
trains (``real_brain_model``): one ``medseg predict`` over every variant of the held-out
slabs, each variant's labels taken back onto the original grid (nearest voxel centre in
world coordinates) and compared with the original's, Dice >= 0.95 per label.
"""

from __future__ import annotations

from collections.abc import Callable

import nibabel as nib
import numpy as np
import pytest
from nibabel.processing import resample_from_to
from scipy import ndimage

MIN_AGREEMENT = 0.95
Variant = Callable[[nib.Nifti1Image], nib.Nifti1Image]


def noisy_background(image: nib.Nifti1Image) -> nib.Nifti1Image:
    """Low noise (2 % of the bright end, as in an MRI's air) where the image is exactly 0."""
    data = np.asarray(image.dataobj, dtype=np.float32)
    noise = np.abs(np.random.default_rng(0).normal(0, 0.02 * np.percentile(data, 99.5), data.shape))
    return nib.Nifti1Image(np.where(data == 0, noise, data).astype(np.float32), image.affine)


def scaled(factor: float) -> Variant:
    """Intensities times ``factor`` (another scanner's arbitrary units)."""

    def scale(image: nib.Nifti1Image) -> nib.Nifti1Image:
        return nib.Nifti1Image(np.asarray(image.dataobj, np.float32) * factor, image.affine)

    return scale


def stored(orientation: list[list[int]]) -> Variant:
    """The same voxels stored another way: ``orientation`` is nibabel's (new axis, flip) per
    axis; the affine changes with the data, so the world is unchanged."""
    return lambda image: image.as_reoriented(np.array(orientation, dtype=float))


def halved_voxels(image: nib.Nifti1Image) -> nib.Nifti1Image:
    """The image on a grid of half the voxel size whose every other node is an original
    voxel centre (linear interpolation between them), so that taking the labels back to the
    original centres compares like with like, with no interpolation of the labels."""
    data = np.asarray(image.dataobj, np.float32)
    nodes = np.indices([2 * size - 1 for size in data.shape], dtype=np.float32) / 2
    finer = ndimage.map_coordinates(data, nodes, order=1)
    affine = image.affine.copy()
    affine[:3, :3] = image.affine[:3, :3] / 2
    return nib.Nifti1Image(finer.astype(np.float32), affine)


VARIANTS: dict[str, Variant] = {
    "noise_background": noisy_background,
    "lps": stored([[0, -1], [1, -1], [2, 1]]),
    "axes_permuted": stored([[2, 1], [0, 1], [1, -1]]),
    "intensity_x0.5": scaled(0.5),
    "intensity_x2": scaled(2.0),
    "voxels_halved": halved_voxels,
}


def dice(first: np.ndarray, second: np.ndarray) -> float:
    both = first.sum() + second.sum()
    return 1.0 if both == 0 else 2.0 * np.logical_and(first, second).sum() / both


@pytest.fixture(scope="module")
def predictions(real_brain_model, tmp_path_factory, medseg_here):
    """Every variant of every held-out slab, predicted in one ``medseg predict`` run."""
    folder = tmp_path_factory.mktemp("variants")
    inputs = folder / "inputs"
    inputs.mkdir()
    held_out = real_brain_model.slabs.held_out()
    for case, (image_path, _) in held_out.items():
        image = nib.load(image_path)
        nib.save(image, inputs / f"{case}__original.nii.gz")
        for name, variant in VARIANTS.items():
            nib.save(variant(image), inputs / f"{case}__{name}.nii.gz")
    medseg_here("predict", real_brain_model.model_dir, inputs, "--output", folder / "out")
    return folder / "out", sorted(held_out)


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_labels_do_not_change_with_how_the_image_is_stored(variant, predictions, real_brain_model):
    output, cases = predictions
    labels = real_brain_model.slabs.labels
    scores = {}
    for case in cases:
        original = nib.load(output / f"{case}__original.nii.gz")
        changed = nib.load(output / f"{case}__{variant}.nii.gz")
        on_grid = resample_from_to(changed, original, order=0)
        reference = np.asarray(original.dataobj)
        compared = np.asarray(on_grid.dataobj)
        for name, value in labels.items():
            scores[(case, name)] = round(dice(reference == value, compared == value), 3)
    assert min(scores.values()) >= MIN_AGREEMENT, scores
