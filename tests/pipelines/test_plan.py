"""Planning from the data: the fingerprint measures what the cases hold, the rules turn it
into spacing, normalisation, patch, batch and pooling, and training applies the plan."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import yaml

from medseg.config import parse_config
from medseg.datasets import discover
from medseg.datasets.fingerprint import fingerprint_dataset
from medseg.errors import ConfigError
from medseg.pipelines.training import plan as rules
from medseg.pipelines.training.planner import plan_run


def write_folder_case(root, name, image, label, affine):
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(image, affine), root / "images" / f"{name}.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), root / "labels" / f"{name}.nii.gz")


def head(shape=(24, 20, 16), noise=0.0, seed=0):
    """An 'MRI' ellipsoid head on exact-zero (or low-noise) background, two label blobs."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    inside = (grid**2).sum(0) < 0.5
    image = np.where(inside, 100 + rng.normal(0, 5, shape), 0).astype(np.float32)
    image += np.abs(rng.normal(0, noise, shape)).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    label[4:7, 4:7, 4:7] = 1
    label[14:18, 12:15, 9:12] = 1
    image[label == 1] = 160
    return image, label


@pytest.fixture
def mri_folder(tmp_path):
    root = tmp_path / "mri"
    for index in range(3):
        image, label = head(seed=index)
        write_folder_case(root, f"case{index}", image, label, np.diag([1.0, 1.0, 2.0, 1.0]))
    return root


def folder_config(root, **sections):
    raw = {
        "data": {"layout": "folder", "root": str(root), "labels": {"lesion": 1}},
        "network": {"name": "unetpp", "preset": "tiny"},
        "tracking": {"enabled": False},
    }
    for key, value in sections.items():
        raw[key] = raw.get(key, {}) | value
    return parse_config(raw, "test")


def test_fingerprint_measures_geometry_intensities_and_labels(mri_folder):
    index = discover("folder", mri_folder, labels={"lesion": 1})
    fingerprint = fingerprint_dataset(index)
    data = fingerprint.to_json()
    assert data["cases"] == 3
    assert data["geometry"]["spacing"]["median"] == [1.0, 1.0, 2.0]
    assert data["geometry"]["shape"]["median"] == [24, 20, 16]
    assert data["geometry"]["orientations"] == {"RAS": 3}
    image, _ = head()
    assert data["channels"]["image"]["zero_share"]["median"] == pytest.approx(
        np.mean(image == 0), abs=0.01
    )
    assert fingerprint.median_crop_ratio < 0.75  # the head fills less than the box
    lesion = data["labels"]["lesion"]
    assert lesion["components"]["median"] == 2  # two separate blobs per case
    assert lesion["voxels"]["median"] == 27 + 36
    assert lesion["component_voxels"]["min"] == 27
    foreground = data["channels"]["image"]["foreground"]["percentiles"]
    assert foreground["p50"] == 160  # every labelled voxel holds 160


def test_fingerprint_reports_ras_order_for_files_stored_otherwise(tmp_path):
    root = tmp_path / "lps"
    for index in range(2):
        image, label = head(shape=(24, 20, 16), seed=index)
        # Stored as (z, y, x) with LPS-style flips: RAS order must come out the same.
        flipped = np.array([[0, 0, -1.0, 0], [0, -1.0, 0, 0], [2.0, 0, 0, 0], [0, 0, 0, 1]])
        write_folder_case(
            root, f"c{index}", image.transpose(2, 1, 0), label.transpose(2, 1, 0), flipped
        )
    fingerprint = fingerprint_dataset(discover("folder", root, labels={"lesion": 1}))
    assert fingerprint.cases[0].shape == [24, 20, 16]
    assert fingerprint.cases[0].spacing == [1.0, 1.0, 2.0]
    assert fingerprint.cases[0].orientation != "RAS"


def test_ct_statistics_come_from_the_training_foreground():
    values = np.random.default_rng(0).normal(60, 20, 5000)
    stats = rules.ct_statistics(values)
    low, high = np.percentile(values, [0.5, 99.5])
    assert (stats["window_low"], stats["window_high"]) == pytest.approx((low, high))
    assert stats["mean"] == pytest.approx(np.clip(values, low, high).mean())
    fixed = rules.ct_statistics(values, window=(-200, 250))
    assert (fixed["window_low"], fixed["window_high"]) == (-200, 250)
    with pytest.raises(ConfigError, match="no labelled voxels"):
        rules.ct_statistics(np.zeros(0))


class _Spacings:
    """A fingerprint stand-in with just the geometry ``target_spacing`` reads."""

    layout = "lits"

    def __init__(self, spacings, shapes):
        self.spacings = np.array(spacings, dtype=float)
        self.shapes = np.array(shapes, dtype=float)


def test_target_spacing_is_the_median_and_the_coarse_axis_its_tenth_percentile():
    isotropic = _Spacings([[1, 1, 1], [1.2, 1.2, 1.2], [0.8, 0.8, 0.8]], [[100, 100, 100]] * 3)
    assert rules.target_spacing(isotropic) == [1.0, 1.0, 1.0]
    thick = [[0.8, 0.8, z] for z in (1.0, 5.0, 5.0, 5.0, 5.0, 5.0)]
    anisotropic = _Spacings(thick, [[512, 512, 40]] * 6)
    expected = float(np.percentile([1.0, 5, 5, 5, 5, 5], 10))
    assert rules.target_spacing(anisotropic) == [0.8, 0.8, round(expected, 4)]


def test_unet_pooling_leaves_thick_slices_until_the_plane_catches_up():
    strides = rules.unet_strides([128, 128, 32], [0.8, 0.8, 3.2], depth=4)
    assert strides[0] == [2, 2, 1] and strides[1] == [2, 2, 1]  # 1.6 then 3.2 mm in plane
    assert strides[2] == [2, 2, 2]  # now 3.2 mm everywhere
    # Pooled while a feature map keeps 8 voxels, so the bottleneck has at least 4.
    assert rules.unet_strides([16, 16, 16], [1, 1, 1], depth=4) == [[2, 2, 2], [2, 2, 2]]


def test_normalisation_is_over_the_body_when_the_background_is_air_zero_or_noisy(
    mri_folder, tmp_path
):
    index = discover("folder", mri_folder, labels={"lesion": 1})
    assert rules.normalization(fingerprint_dataset(index)) == "zscore_body"
    for name, noise in (("noisy", 3.0), ("full", None)):
        root = tmp_path / name
        for case in range(3):
            image, label = head(noise=noise or 0.0, seed=case)
            if noise is None:  # tissue across the whole field of view: nothing to crop
                image = 100 + np.random.default_rng(case).normal(0, 5, image.shape)
                image[label == 1] = 160
            write_folder_case(root, f"case{case}", image.astype(np.float32), label, np.eye(4))
        fingerprint = fingerprint_dataset(discover("folder", root, labels={"lesion": 1}))
        expected = "zscore_body" if noise else "zscore_image"
        assert rules.normalization(fingerprint) == expected, name
    assert fingerprint.median_body_share == 1.0


def test_body_normalisation_gives_the_same_input_for_zero_and_noisy_air(tmp_path):
    from medseg.transforms.presets import Preprocessing, inference_transforms

    image, _ = head(shape=(40, 36, 24))
    air_noise = np.abs(np.random.default_rng(1).normal(0, 3.0, image.shape))
    noisy = np.where(image == 0, air_noise, image).astype(np.float32)
    pre = Preprocessing(
        layout="folder",
        modality="mri",
        channels=["image"],
        patch_size=[16, 16, 16],
        normalization="zscore_body",
        foreground_crop=False,
    )
    inputs = []
    for name, data in (("zero", image), ("noisy", noisy)):
        nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / f"{name}.nii.gz")
        inputs.append(inference_transforms(pre)({"image": str(tmp_path / f"{name}.nii.gz")}))
    zero, noise = (item["image"][0].numpy() for item in inputs)
    from scipy import ndimage

    inside = image > 0
    air = ndimage.distance_transform_edt(~inside) > 3  # beyond the body's smoothed edge
    assert (zero[air] == 0).all() and (noise[air] == 0).mean() > 0.99
    # The body's smoothed edge holds a band of air: its noise moves the statistics a little
    # (0.08 standard deviations on this small head), far less than tissues differ.
    assert np.abs(zero[inside] - noise[inside]).max() < 0.1


def test_plan_resolves_every_auto_choice_within_the_budget(mri_folder):
    config = folder_config(mri_folder, train={"memory_gb": 2.0})
    index = discover("folder", mri_folder, labels={"lesion": 1})
    planned = plan_run(config, index, index.cases)
    resolved = planned.config
    assert resolved.transforms.spacing == [1.0, 1.0, 2.0]
    assert resolved.transforms.normalization == "zscore_body"
    assert resolved.transforms.foreground_crop is True
    strides = resolved.network.options["strides"]
    divisor = np.prod(strides, axis=0)
    assert all(
        size % k == 0 for size, k in zip(resolved.transforms.patch_size, divisor, strict=True)
    )
    assert isinstance(resolved.train.batch_size, int) and resolved.train.batch_size >= 1
    assert planned.plan["memory_estimate_gb"] <= 2.0
    planned_keys = [
        resolved.transforms.spacing,
        resolved.transforms.patch_size,
        resolved.transforms.normalization,
        resolved.transforms.foreground_crop,
        resolved.train.batch_size,
        resolved.network.pooling,
    ]
    assert "auto" not in planned_keys
    kept = folder_config(
        mri_folder, transforms={"patch_size": [16, 16, 8]}, train={"batch_size": 1}
    )
    planned = plan_run(kept, index, index.cases)
    assert planned.config.transforms.patch_size == [16, 16, 8]
    assert planned.plan["decided_by"]["patch_size"] == "config"
    assert planned.config.train.batch_size == 1


def test_plan_refuses_a_budget_too_small_and_too_few_cases(mri_folder):
    index = discover("folder", mri_folder, labels={"lesion": 1})
    config = folder_config(mri_folder, train={"memory_gb": 0.001})
    with pytest.raises(
        ConfigError, match=r"too small .* smallest workable patch \[\d+, \d+, \d+\]"
    ):
        plan_run(config, index, index.cases)
    with pytest.raises(ConfigError, match="planning needs at least 2"):
        plan_run(folder_config(mri_folder), index, index.cases[:1])


def test_explicit_choices_that_cannot_fit_are_refused_before_training(mri_folder):
    index = discover("folder", mri_folder, labels={"lesion": 1})
    config = folder_config(
        mri_folder,
        transforms={"patch_size": [96, 96, 96]},
        train={"batch_size": 8, "memory_gb": 0.5},
    )
    with pytest.raises(ConfigError, match=r"patch_size \[96, 96, 96\]: a training step of 16"):
        plan_run(config, index, index.cases)


def test_medseg_plan_writes_fingerprint_and_plan(mri_folder, tmp_path, medseg_cli):
    output = tmp_path / "plan"
    args = ["plan", "folder", mri_folder, "--output", output, "--preset", "tiny"]
    result = medseg_cli(*args)
    assert result.code == 0, result.err
    plan = json.loads((output / "plan.json").read_text())
    fingerprint = json.loads((output / "fingerprint.json").read_text())
    assert plan["cases"] == fingerprint["cases"] == 3
    assert "patch" in result.out
    assert medseg_cli(*args, "--memory-gb", "0.001").code == 2
    inside = medseg_cli("plan", "folder", mri_folder, "--output", mri_folder / "p")
    assert inside.code == 2 and "inside the dataset" in inside.err
    assert not (mri_folder / "p").exists()


def test_training_resolves_its_plan_into_the_run_and_the_model(
    brats_phantoms, tmp_path, mlflow_uri, medseg_cli
):
    import mlflow

    run = tmp_path / "run"
    overrides = [
        f"data.root={brats_phantoms['train']}",
        f"output={run}",
        "network.preset=tiny",
        "train.epochs=1",
        "train.iterations_per_epoch=1",
        "tracking.experiment=plan-test",
    ]
    config = tmp_path / "config.yaml"
    config.write_text("data: {layout: brats, root: x}\nnetwork: {name: unetpp}\n")
    result = medseg_cli("train", config, *(f"--set={item}" for item in overrides))
    assert result.code == 0, result.err
    plan = json.loads((run / "plan.json").read_text())
    assert json.loads((run / "fingerprint.json").read_text())["cases"] == plan["cases"]
    resolved = parse_config(yaml.safe_load((run / "config.yaml").read_text()), "saved")
    assert resolved.transforms.patch_size == plan["patch_size"]
    assert resolved.train.batch_size == plan["batch_size"]
    assert resolved.transforms.normalization == plan["normalization"] == "zscore_body"
    assert resolved.network.pooling == "fixed"
    info = medseg_cli("info", run / "model", "--json")
    assert json.loads(info.out)["plan"]["patch_size"] == plan["patch_size"]
    client = mlflow.tracking.MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name("plan-test")
    (logged,) = client.search_runs([experiment.experiment_id])
    names = {item.path for item in client.list_artifacts(logged.info.run_id)}
    assert {"plan.json", "fingerprint.json"} <= names


@pytest.mark.parametrize(
    ("layout", "shape"),
    [
        ("brats", (48, 40, 32)),
        ("lits", (64, 64, 24)),
        ("msd", (48, 40, 32)),
        ("em", (64, 64, 8)),
        ("isic", (96, 64)),
    ],
)
def test_medseg_plan_works_on_every_layout(layout, shape, tmp_path, medseg_cli):
    from medseg.datasets.synthetic import synthesize

    synthesize(layout, tmp_path / "data", cases=3, shape=shape, seed=1)
    output = tmp_path / "plan"
    result = medseg_cli("plan", layout, tmp_path / "data", "-o", output, "--preset", "tiny")
    assert result.code == 0, result.err
    plan = json.loads((output / "plan.json").read_text())
    expected = {"lits": "ct_window", "em": "percentile", "isic": "zscore_image"}
    assert plan["normalization"] == expected.get(layout, "zscore_body")
    assert len(plan["patch_size"]) == len(shape)
    divisor = np.prod(plan["network"]["options"]["strides"], axis=0)
    assert all(size % k == 0 for size, k in zip(plan["patch_size"], divisor, strict=True))
    assert plan["batch_size"] >= 1 and plan["memory_estimate_gb"] <= plan["memory_budget_gb"]


def test_planning_refuses_non_finite_voxels_naming_the_file(tmp_path):
    root = tmp_path / "nan"
    for case in range(2):
        image, label = head(seed=case)
        if case == 1:
            image[3, 3, 3] = np.nan
        write_folder_case(root, f"case{case}", image, label, np.eye(4))
    index = discover("folder", root, labels={"lesion": 1})
    with pytest.raises(ConfigError, match=r"case1\.nii\.gz: holds NaN or infinite voxels"):
        fingerprint_dataset(index)
