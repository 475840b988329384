"""Preprocessing fitted on the training set and stored with the model; augmentation that
keeps image and label aligned; 2.5D inputs."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg.config import AugmentConfig
from medseg.datasets.base import Case, LabelScheme
from medseg.transforms.presets import Preprocessing, inference_transforms, training_transforms
from medseg.transforms.slices import adjacent_slices

SCHEME = LabelScheme.classes({"background": 0, "object": 1})


def write_case(folder, name, image, label, spacing=(0.8, 0.8, 2.5)) -> Case:
    affine = np.diag([*spacing, 1.0])
    nib.save(nib.Nifti1Image(image, affine), folder / f"{name}_image.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), folder / f"{name}_label.nii.gz")
    return Case(name, (folder / f"{name}_image.nii.gz",), folder / f"{name}_label.nii.gz")


@pytest.fixture
def ct_cases(tmp_path):
    rng = np.random.default_rng(0)
    cases = []
    for index in range(3):
        image = rng.normal(-800, 50, (20, 20, 8)).astype(np.int16)
        label = np.zeros((20, 20, 8), dtype=np.uint8)
        label[5:15, 5:15, 2:6] = 1
        image[label == 1] = rng.normal(60 + 10 * index, 20, int(label.sum())).astype(np.int16)
        cases.append(
            write_case(tmp_path, f"case{index}", image, label, spacing=(0.8, 0.8, 2.5 + index))
        )
    return cases


def test_inference_reproduces_training_normalisation_from_stored_statistics(ct_cases, tmp_path):
    stats = {"window_low": -100.0, "window_high": 200.0, "mean": 50.0, "std": 25.0}
    pre = Preprocessing(
        layout="lits",
        modality="ct",
        channels=["ct"],
        patch_size=[8, 8, 4],
        foreground_crop=False,
        intensity=stats,
    )
    stored = Preprocessing.model_validate_json(pre.model_dump_json())
    raw = np.asarray(nib.load(ct_cases[1].image[0]).dataobj, dtype=np.float32)
    normalised = inference_transforms(stored)({"image": str(ct_cases[1].image[0])})["image"][0]
    expected = (np.clip(raw, -100, 200) - 50) / 25
    np.testing.assert_allclose(normalised.numpy(), expected, atol=1e-5)


def test_augmentations_keep_image_and_label_aligned(tmp_path):
    rng = np.random.default_rng(1)
    label = np.zeros((24, 24, 24), dtype=np.uint8)
    for _ in range(4):
        x, y, z = rng.integers(4, 18, 3)
        label[x : x + 5, y : y + 3, z : z + 6] = 1
    image = (label * 200 + 20).astype(np.int16)  # the label drawn on the image
    case = write_case(tmp_path, "drawn", image, label, spacing=(1, 1, 1))
    pre = Preprocessing(
        layout="folder",
        modality="rgb",
        channels=["x"],
        patch_size=[16, 16, 16],
        foreground_crop=False,
    )
    augment = AugmentConfig(flip=1, rotate90=1, affine=1, intensity_shift=1, intensity_scale=1)
    transform = training_transforms(
        pre, SCHEME, samples_per_case=4, foreground_ratio=1.0, augment=augment
    )
    transform.set_random_state(seed=3)
    for sample in transform(case.as_dict()):
        image = sample["image"][0]
        drawn = image > (image.max() + image.min()) / 2
        labelled = sample["label"][0] > 0.5
        overlap = (drawn & labelled).sum() / max(1, (drawn | labelled).sum())
        assert labelled.any()
        assert overlap > 0.75  # interpolation blurs 3-voxel bars; a misaligned pair scores ~0


def test_adjacent_slices_become_channels_with_edges_repeated():
    volume = torch.arange(2 * 1 * 1 * 4, dtype=torch.float32).reshape(2, 1, 1, 4)
    stacked = adjacent_slices(volume, 3)
    assert stacked.shape == (6, 1, 1, 4)
    # channel 0 of slice z: channel 0 of slice z-1 (slice 0 repeated at the edge)
    assert stacked[0, 0, 0].tolist() == [0, 0, 1, 2]
    assert stacked[1, 0, 0].tolist() == [0, 1, 2, 3]
    assert stacked[2, 0, 0].tolist() == [1, 2, 3, 3]
    assert stacked[4, 0, 0].tolist() == [4, 5, 6, 7]


def test_two_and_a_half_d_training_gives_two_dimensional_patches(ct_cases):
    pre = Preprocessing(
        layout="lits",
        modality="ct",
        channels=["ct"],
        patch_size=[12, 12],
        slices=3,
        foreground_crop=False,
        intensity={"window_low": -1000.0, "window_high": 1000.0, "mean": 0.0, "std": 100.0},
    )
    assert pre.slice_wise
    transform = training_transforms(
        pre, SCHEME, samples_per_case=2, foreground_ratio=1.0, augment=AugmentConfig()
    )
    for sample in transform(ct_cases[0].as_dict()):
        assert sample["image"].shape == (3, 12, 12)
        assert sample["label"].shape == (1, 12, 12)


def test_em_crops_centre_on_membranes_whose_label_value_is_zero(tmp_path):
    from medseg.datasets import discover
    from medseg.datasets.synthetic import synthesize

    synthesize("em", tmp_path, cases=1, shape=(96, 96, 8), seed=0)
    index = discover("em", tmp_path)
    pre = Preprocessing(
        layout="em", modality="em", channels=["em"], patch_size=[15, 15], foreground_crop=False
    )
    augment = AugmentConfig(flip=0, intensity_shift=0, intensity_scale=0)
    transform = training_transforms(
        pre, index.labels, samples_per_case=32, foreground_ratio=1.0, augment=augment
    )
    transform.set_random_state(seed=0)
    centres = [int(sample["label"][0, 7, 7]) for sample in transform(index.cases[0].as_dict())]
    # Class 1 is the membrane (ISBI value 0); centres near the border may be shifted inwards.
    assert sum(centres) >= 0.9 * len(centres)


@pytest.mark.parametrize(
    "scheme",
    [
        LabelScheme.classes({"background": 0, "organ": 1, "lesion": 2}),
        LabelScheme("regions", ("organ", "lesion"), ((1, 2), (2,)), (1, 2), (0, 1)),
    ],
    ids=["classes", "regions"],
)
def test_balanced_crops_centre_on_a_small_lesion_as_often_as_on_its_organ(tmp_path, scheme):
    label = np.zeros((32, 32, 32), dtype=np.uint8)
    label[6:26, 6:26, 6:26] = 1
    label[15:17, 15:17, 15:17] = 2  # 8 lesion voxels in an organ of 8000
    organ = np.minimum(label, 1)
    case = write_case(tmp_path, "lesion", (label * 100).astype(np.int16), label, (1, 1, 1))
    without_lesion = write_case(tmp_path, "organ", (organ * 100).astype(np.int16), organ, (1, 1, 1))
    empty = np.zeros_like(label)
    background_only = write_case(tmp_path, "none", (organ * 100).astype(np.int16), empty, (1, 1, 1))
    pre = Preprocessing(
        layout="folder", modality="rgb", channels=["x"], patch_size=[5, 5, 5], foreground_crop=False
    )
    augment = AugmentConfig(flip=0, intensity_shift=0, intensity_scale=0)
    lesion = 2

    def centres(case: Case, foreground_classes: str, foreground_ratio: float = 1.0) -> list[int]:
        transform = training_transforms(
            pre,
            scheme,
            samples_per_case=64,
            foreground_ratio=foreground_ratio,
            augment=augment,
            foreground_classes=foreground_classes,
        )
        transform.set_random_state(seed=0)
        samples = transform(case.as_dict())
        assert all("label_sampling" not in sample for sample in samples)
        if scheme.mode == "regions":  # 0 outside, 1 organ, 2 lesion
            return [int(sample["label"][:, 2, 2, 2].sum()) for sample in samples]
        return [int(sample["label"][0, 2, 2, 2]) for sample in samples]

    anywhere = centres(case, "any")
    balanced = centres(case, "balanced")
    assert 0 not in anywhere + balanced
    assert anywhere.count(lesion) <= 0.1 * len(anywhere)
    assert balanced.count(lesion) >= 0.3 * len(balanced)
    for foreground_classes in ("any", "balanced"):
        assert set(centres(case, foreground_classes, foreground_ratio=0.0)) == {0}
    # A case without the lesion draws every crop from the classes it has, one without
    # foreground from the background.
    assert set(centres(without_lesion, "balanced")) == {1}
    assert set(centres(background_only, "balanced")) == {0}


def test_the_config_offers_exactly_the_normalisations_preprocessing_applies():
    import typing

    from medseg.config import NormalizationChoice
    from medseg.transforms.presets import NORMALIZATIONS, Normalization

    offered = set(typing.get_args(NormalizationChoice)) - {"auto"}
    assert offered == set(NORMALIZATIONS) == set(typing.get_args(Normalization))
