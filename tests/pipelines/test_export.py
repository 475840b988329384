"""``export_model``: every registered network, as TorchScript and as ONNX, gives medseg's
logits within 1e-4 from a file loaded without medseg, at any batch size; a pruned UNet++
exports its level's weights alone; ``preprocessing.json`` says how to feed the file and
read its output. Parametrized over ``medseg.networks.available()``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from medseg.datasets.base import LabelScheme
from medseg.errors import ConfigError
from medseg.networks import available
from medseg.pipelines.export import export
from medseg.pipelines.export.export import ExportError, ExportResult, export_model
from medseg.pipelines.export.preprocessing_json import INTENSITY_STEPS
from medseg.pipelines.model_dir import (
    InferenceSpec,
    ModelConfig,
    NetworkSpec,
    build_from_config,
    load_model_dir,
    save_model_dir,
)
from medseg.transforms.presets import Preprocessing

TOLERANCE = 1e-4
FORMATS = ("torchscript", "onnx")
# (network, spatial_dims) -> the smallest patch its tiny preset takes. A registered network
# missing here fails test_cases_cover_the_registry, so none escapes the export contract.
CASES = {
    ("unetpp", 2): (32, 32),
    ("unetpp", 3): (32, 16, 16),
    ("swin_unetr", 2): (64, 64),
    ("swin_unetr", 3): (64, 32, 32),
    ("hdenseunet", 3): (32, 32, 8),
    ("att_swinunet", 2): (64, 64),
}
# The ONNX exporter's time grows with the number of Swin blocks, not with new operations:
# one stage of a window block and a shifted-window block covers every kind there is.
FEWER_BLOCKS = {
    "swin_unetr": {"depths": (2, 1, 1, 1)},
    "att_swinunet": {"depths": (2, 1), "num_heads": (1, 2), "cross_attention_depth": 1},
}
BRATS = LabelScheme(
    "regions", ("TC", "WT", "ET"), ((1, 4), (1, 2, 4), (4,)), paint=(1, 2, 4), paint_order=(1, 0, 2)
)
LITS = LabelScheme.classes({"background": 0, "liver": 1, "tumour": 2})
ISIC = LabelScheme.classes({"background": 0, "lesion": 1})
CT_WINDOW = {"window_low": -100.0, "window_high": 240.0, "mean": 90.0, "std": 60.0}


def model_config(name: str, spatial_dims: int, **options: object) -> ModelConfig:
    """A tiny model: BraTS regions (MRI) or LiTS classes (CT) in 3D, ISIC classes in 2D."""
    patch = list(CASES[(name, spatial_dims)])
    if spatial_dims == 2:
        layout, modality, channels, scheme = "isic", "rgb", ["red", "green", "blue"], ISIC
    elif name == "hdenseunet":
        layout, modality, channels, scheme = "lits", "ct", ["ct"], LITS
    else:
        layout, modality, channels, scheme = "brats", "mri", ["flair", "t1", "t1ce", "t2"], BRATS
    return ModelConfig(
        network=NetworkSpec(
            name=name,
            preset="tiny",
            spatial_dims=spatial_dims,
            in_channels=len(channels),
            out_channels=scheme.out_channels,
            options=options,
        ),
        preprocessing=Preprocessing(
            layout=layout,
            modality=modality,
            channels=channels,
            spatial_dims=spatial_dims,
            spacing=[1.0, 1.0, 2.5] if spatial_dims == 3 else None,
            patch_size=patch,
            intensity=CT_WINDOW if modality == "ct" else {},
        ),
        labels=scheme.to_dict(),
        inference=InferenceSpec(roi_size=patch, overlap=0.25),
    )


def save_model(folder: Path, config: ModelConfig) -> Path:
    torch.manual_seed(0)
    return save_model_dir(folder, config, build_from_config(config))


def run_exported(path: Path, image: torch.Tensor) -> torch.Tensor:
    """The exported file's logits, loaded with torch or onnxruntime alone."""
    if path.suffix == ".onnx":
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, {"image": image.numpy()})[0])
    with torch.no_grad():
        return torch.jit.load(str(path))(image)


Exported = tuple[Path, dict[str, ExportResult]]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, int], Exported]:
    """``exported(name, spatial_dims)``: a tiny model directory and its export in both
    formats into one folder, made once per module (ONNX export takes seconds)."""
    done: dict[tuple[str, int], Exported] = {}

    def export_case(name: str, spatial_dims: int) -> Exported:
        if (name, spatial_dims) not in done:
            folder = tmp_path_factory.mktemp(f"{name}{spatial_dims}d")
            config = model_config(name, spatial_dims, **FEWER_BLOCKS.get(name, {}))
            model = save_model(folder / "model", config)
            results = {fmt: export_model(model, fmt, folder / "export") for fmt in FORMATS}
            done[(name, spatial_dims)] = (model, results)
        return done[(name, spatial_dims)]

    return export_case


def test_cases_cover_the_registry() -> None:
    assert {name for name, _ in CASES} == set(available())


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(("name", "spatial_dims"), sorted(CASES))
def test_exported_file_gives_medseg_logits_at_any_batch_size(
    exported, name, spatial_dims, fmt
) -> None:
    model, results = exported(name, spatial_dims)
    result = results[fmt]
    config, network = load_model_dir(model)
    assert result.file.name == export.FILES[fmt]
    assert result.input_shape == (2, config.network.in_channels, *config.inference.roi_size)
    assert 0.0 <= result.max_abs_error <= TOLERANCE
    torch.manual_seed(1)
    image = torch.randn(3, *result.input_shape[1:])  # a batch size the export never saw
    with torch.no_grad():
        expected = network(image)
    logits = run_exported(result.file, image)
    assert logits.shape == expected.shape
    assert (logits - expected).abs().max().item() <= TOLERANCE
    entry = json.loads(result.preprocessing.read_text())["exports"][fmt]
    assert entry["file"] == result.file.name
    assert entry["max_abs_error"] == result.max_abs_error
    assert entry["checked_batch_sizes"] == [2, 1]


def test_files_run_in_a_python_that_cannot_import_medseg(exported) -> None:
    _, results = exported("unetpp", 2)
    script = textwrap.dedent(
        """
        import json, sys
        sys.modules["medseg"] = None  # any import of medseg now fails
        import numpy, onnxruntime, torch
        folder = sys.argv[1]
        info = json.load(open(f"{folder}/preprocessing.json"))
        image = torch.randn(1, *info["input"]["shape"][1:])
        scripted = torch.jit.load(f"{folder}/model.pt")(image).detach().numpy()
        session = onnxruntime.InferenceSession(f"{folder}/model.onnx")
        exported = session.run(None, {info["input"]["name"]: image.numpy()})[0]
        print(scripted.shape, float(numpy.abs(scripted - exported).max()))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(results["onnx"].file.parent)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
        env=os.environ | {"PYTHONPATH": ""},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    shape, difference = done.stdout.strip().rsplit(" ", 1)
    assert shape == "(1, 2, 32, 32)"
    assert float(difference) <= 2 * TOLERANCE


@pytest.mark.parametrize("fmt", FORMATS)
def test_pruned_unetpp_exports_only_its_level(fmt, tmp_path) -> None:
    level = 2
    model = save_model(tmp_path / "model", model_config("unetpp", 2))
    _, full = load_model_dir(model)
    result = export_model(model, fmt, tmp_path / "export", prune_level=level)
    image = torch.randn(1, *result.input_shape[1:])
    with torch.no_grad():
        expected = full(image, prune_level=level)
    assert (run_exported(result.file, image) - expected).abs().max().item() <= TOLERANCE
    if fmt == "torchscript":
        weights = sum(p.numel() for p in torch.jit.load(str(result.file)).parameters())
        assert weights == full.level_parameter_count(level)
    else:
        # The graph keeps the weights it uses (not the lower heads) and a few shape constants.
        weights = sum(int(np.prod(t.dims)) for t in onnx.load(str(result.file)).graph.initializer)
        assert abs(weights - full.level_parameter_count(level)) < 0.01 * weights
    assert weights < full.level_parameter_count(level + 1)
    network = json.loads(result.preprocessing.read_text())["network"]
    assert network["options"]["prune_level"] == level


def test_a_pruned_model_directory_exports_as_it_is(tmp_path) -> None:
    model = save_model(tmp_path / "model", model_config("unetpp", 2, prune_level=1))
    _, pruned = load_model_dir(model)
    result = export_model(model, "torchscript", tmp_path / "export")
    weights = sum(p.numel() for p in torch.jit.load(str(result.file)).parameters())
    assert weights == sum(p.numel() for p in pruned.parameters())


def described(exported: Callable[[str, int], Exported], name: str, dims: int) -> dict:
    return json.loads(exported(name, dims)[1]["torchscript"].preprocessing.read_text())


def test_preprocessing_json_describes_an_mri_region_model(exported) -> None:
    description = described(exported, "unetpp", 3)
    assert description["network"]["name"] == "unetpp"
    assert description["network"]["preset"] == "tiny"
    assert description["input"]["shape"] == ["batch", 4, 32, 16, 16]
    assert description["output"]["shape"] == ["batch", 3, 32, 16, 16]
    assert description["patch_size"] == [32, 16, 16]
    pre = description["preprocessing"]
    assert pre["channels"] == ["flair", "t1", "t1ce", "t2"]
    assert pre["orientation"] == "RAS"
    assert pre["spacing"] == [1.0, 1.0, 2.5]
    steps = pre["steps"]
    kinds = ["require_usable", "orientation", "resample", "crop_foreground", "z-score"]
    assert [step["step"] for step in steps] == kinds
    assert steps[1]["axcodes"] == "RAS"
    assert steps[2]["spacing"] == [1.0, 1.0, 2.5]
    assert steps[3]["select"] == "voxels > 0 in any channel"
    assert pre["normalisation"]["steps"] == [steps[4]]
    assert steps[4]["nonzero_only"] is True
    assert steps[4]["channel_wise"] is True
    assert description["labels"] == BRATS.to_dict()
    assert description["postprocessing"]["activation"] == "sigmoid"
    assert description["postprocessing"]["threshold"] == 0.5
    assert description["sliding_window"]["overlap"] == 0.25


def test_preprocessing_json_describes_a_ct_class_model_and_a_2d_model(exported) -> None:
    description = described(exported, "hdenseunet", 3)
    normalisation = description["preprocessing"]["normalisation"]
    assert normalisation["statistics"] == CT_WINDOW
    assert [
        (step["step"], step.get("keep"), step.get("otherwise")) for step in normalisation["steps"]
    ] == [
        ("threshold", "< 240", 240.0),
        ("threshold", "> -100", -100.0),
        ("z-score", None, None),
    ]
    assert normalisation["steps"][2]["subtract"] == 90.0
    assert normalisation["steps"][2]["divide_by"] == 60.0
    crop = next(s for s in description["preprocessing"]["steps"] if s["step"] == "crop_foreground")
    assert crop["select"] == "voxels > -500 (HU) in any channel"
    assert description["labels"] == LITS.to_dict()
    assert description["postprocessing"]["activation"] == "softmax"

    description = described(exported, "unetpp", 2)
    assert description["preprocessing"]["orientation"] == "RA"
    assert description["preprocessing"]["normalisation"]["steps"][0] | {"meaning": ""} == {
        "step": "z-score",
        "subtract": None,
        "divide_by": None,
        "nonzero_only": False,
        "channel_wise": True,
        "meaning": "",
    }


def apply_intensity_steps(image: np.ndarray, steps: list[dict]) -> np.ndarray:
    """What a user without medseg writes from preprocessing.json (one channel)."""
    image = image.astype(np.float64)
    for step in steps:
        if step["step"] == "threshold":
            sign, value = step["keep"].split()
            kept = image > float(value) if sign == ">" else image < float(value)
            image = np.where(kept, image, step["otherwise"])
        elif step["step"] == "z-score":
            voxels = image[image != 0] if step["nonzero_only"] else image
            mean = voxels.mean() if step["subtract"] is None else step["subtract"]
            std = voxels.std() if step["divide_by"] is None else step["divide_by"]
            mask = image != 0 if step["nonzero_only"] else np.ones(image.shape, bool)
            image = np.where(mask, (image - mean) / std, image)
        else:
            raise AssertionError(f"no reference for {step['step']}")
    return image


@pytest.mark.parametrize("name", ["unetpp", "hdenseunet"], ids=["mri", "ct"])
def test_the_described_normalisation_is_what_medseg_feeds_the_network(name, tmp_path) -> None:
    from medseg.pipelines.export.preprocessing_json import preprocessing_steps
    from medseg.transforms.presets import inference_transforms

    config = model_config(name, 3)
    pre = config.preprocessing.model_copy(
        update={"channels": ["one"], "spacing": None, "foreground_crop": False}
    )
    config = config.model_copy(update={"preprocessing": pre})
    rng = np.random.default_rng(0)
    raw = rng.normal(100, 200, size=(12, 10, 8)).round()
    raw[:3] = 0  # background for the MRI rule
    path = tmp_path / "image.nii.gz"
    nib.save(nib.Nifti1Image(raw.astype(np.float32), np.eye(4)), path)
    medseg_input = inference_transforms(pre)({"image": str(path)})["image"][0].numpy()
    steps = [s for s in preprocessing_steps(config) if s["step"] in INTENSITY_STEPS]
    np.testing.assert_allclose(medseg_input, apply_intensity_steps(raw, steps), atol=1e-4)


def test_a_step_without_a_description_is_still_listed(monkeypatch) -> None:
    from monai import transforms as mt

    from medseg.pipelines.export import preprocessing_json
    from medseg.transforms import presets

    extra = mt.Compose([mt.ScaleIntensityd("image")])
    monkeypatch.setattr(presets, "inference_transforms", lambda pre: extra)
    steps = preprocessing_json.preprocessing_steps(model_config("unetpp", 3))
    assert steps == [{"step": "ScaleIntensityd"}]


def test_both_formats_share_one_preprocessing_json(exported, tmp_path) -> None:
    _, results = exported("unetpp", 2)
    exports = json.loads(results["onnx"].preprocessing.read_text())["exports"]
    assert exports["torchscript"]["file"] == "model.pt"
    assert exports["onnx"]["file"] == "model.onnx"
    assert exports["onnx"]["opset"] >= 17
    assert exports["onnx"]["exporter"] == "torch.onnx.export(dynamo=True)"

    first = save_model(tmp_path / "first", model_config("unetpp", 2, features=[4, 8]))
    export_model(first, "onnx", tmp_path / "export")
    second = save_model(tmp_path / "second", model_config("unetpp", 2, features=[4, 8, 16]))
    result = export_model(second, "torchscript", tmp_path / "export")
    # model.onnx is the first model's: the description of the second must not list it.
    assert list(json.loads(result.preprocessing.read_text())["exports"]) == ["torchscript"]


def test_a_file_that_does_not_reproduce_medseg_fails_and_leaves_nothing(
    tmp_path, monkeypatch
) -> None:
    model = save_model(tmp_path / "model", model_config("unetpp", 2))
    trace = export._EXPORTERS["torchscript"]

    def off_by_a_little(network, example, path):
        run, details = trace(network, example, path)
        return (lambda image: run(image) + 1e-3), details

    monkeypatch.setitem(export._EXPORTERS, "torchscript", off_by_a_little)
    with pytest.raises(ExportError, match=r"differs from medseg's forward by 0\.001"):
        export_model(model, "torchscript", tmp_path / "export")
    assert list((tmp_path / "export").iterdir()) == []


@pytest.mark.parametrize(
    ("name", "spatial_dims", "fmt", "prune_level", "message"),
    [
        ("unetpp", 2, "tensorrt", None, "unknown export format 'tensorrt'; choose one of"),
        ("swin_unetr", 2, "onnx", 2, "only UNet\\+\\+ can be pruned"),
        ("unetpp", 2, "onnx", 5, "prune level must be in 1\\.\\.4, got 5"),
    ],
)
def test_unusable_requests_are_config_errors(
    name, spatial_dims, fmt, prune_level, message, tmp_path
) -> None:
    model = save_model(tmp_path / "model", model_config(name, spatial_dims))
    with pytest.raises(ConfigError, match=message):
        export_model(model, fmt, tmp_path / "export", prune_level=prune_level)


def test_a_ct_model_without_fitted_statistics_is_refused_and_nothing_written(tmp_path) -> None:
    config = model_config("hdenseunet", 3)
    unfitted = config.model_copy(
        update={"preprocessing": config.preprocessing.model_copy(update={"intensity": {}})}
    )
    model = save_model(tmp_path / "model", unfitted)
    with pytest.raises(ConfigError, match=r"CT preprocessing lacks the fitted statistics \["):
        export_model(model, "onnx", tmp_path / "export")
    assert not (tmp_path / "export").exists()
