"""The Python API: ``docs/api.md``'s examples run as written, and segmenting in memory
gives the labels ``medseg predict`` writes for the same file."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

import medseg

REPOSITORY = Path(__file__).resolve().parents[1]


def python_blocks(page: Path) -> list[str]:
    """The ```python blocks of a Markdown page, in order."""
    return re.findall(r"^```python\n(.*?)^```", page.read_text(encoding="utf-8"), re.M | re.S)


@pytest.fixture(scope="module")
def documented(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The namespace after running every example of docs/api.md in order, in an empty
    folder (the examples train the page's tiny model, once for this module)."""
    folder = tmp_path_factory.mktemp("api-docs")
    namespace: dict[str, Any] = {"__name__": "docs_api"}
    previous = Path.cwd()
    os.chdir(folder)
    try:
        for block in python_blocks(REPOSITORY / "docs" / "api.md"):
            exec(compile(block, "docs/api.md", "exec"), namespace)
    finally:
        os.chdir(previous)
    namespace["folder"] = folder
    return namespace


def test_the_documented_examples_run_and_do_what_they_say(documented) -> None:
    folder = documented["folder"]
    assert documented["model"].label_names == ["background", "liver", "tumour"]
    assert (folder / "volume-0_labels.nii.gz").is_file()
    assert documented["probabilities"].shape == (3, 32, 32, 24)
    cases = {row["case"] for row in documented["records"]}
    assert cases == {"volume-0", "volume-1", "volume-2"}
    assert {row["label"] for row in documented["records"]} == {"liver", "tumour"}
    assert (folder / "preds" / "evaluation" / "metrics.csv").is_file()
    tuned = medseg.load_model(folder / "runs" / "lits-tuned", device="cpu")
    assert tuned.config.provenance["init_from"] == "runs/lits-tiny"


def test_in_memory_images_get_medseg_predict_s_labels(documented, medseg_cli) -> None:
    import SimpleITK as sitk

    folder, model = documented["folder"], documented["model"]
    result = medseg_cli(
        "predict", folder / "runs" / "lits-tiny", folder / "data" / "lits",
        "-o", folder / "predicted", "--device", "cpu",
    )  # fmt: skip
    assert result.code == 0, result.err
    for case in ("volume-0", "volume-2"):
        path = folder / "data" / "lits" / f"{case}.nii"
        expected = np.asarray(nib.load(folder / "predicted" / f"{case}.nii.gz").dataobj)
        assert len(np.unique(expected)) > 1
        image = nib.load(path)
        from_nibabel = model.segment(image)
        assert np.array_equal(np.asarray(from_nibabel.dataobj), expected)
        assert np.allclose(from_nibabel.affine, image.affine)
        from_itk = model.segment(sitk.ReadImage(str(path)))
        assert np.array_equal(sitk.GetArrayFromImage(from_itk).transpose(2, 1, 0), expected)
        from_numpy = model.segment(np.asarray(image.dataobj), affine=image.affine)
        assert np.array_equal(from_numpy, expected)
        from_path = model.segment(path)
        assert np.array_equal(np.asarray(from_path.dataobj), expected)
        from_many = np.asarray(nib.load(folder / "preds" / f"{case}.nii.gz").dataobj)
        assert np.array_equal(from_many, expected)


def test_arrays_without_geometry_and_unknown_objects_are_refused(documented) -> None:
    model = documented["model"]
    with pytest.raises(medseg.ConfigError, match="exactly one of affine= or spacing="):
        model.segment(np.zeros((32, 32, 24), np.float32))
    with pytest.raises(medseg.ConfigError, match="cannot segment a dict"):
        model.segment({"image": "volume-0.nii"})
    with pytest.raises(medseg.CaseError, match=r"^the given image: .*NaN") as refused:
        model.segment(np.full((32, 32, 24), np.nan, np.float32), spacing=(1, 1, 1))
    assert "medseg-api-" not in str(refused.value)


def test_import_medseg_loads_no_heavy_library() -> None:
    code = (
        "import sys, medseg; "
        "print(sorted(m for m in ('torch', 'monai', 'mlflow') if m in sys.modules)); "
        "print(callable(medseg.load_model), callable(medseg.train), callable(medseg.evaluate))"
    )
    shown = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert shown.splitlines() == ["[]", "True True True"]


def test_a_multi_channel_model_takes_a_list_or_a_channel_first_array(
    brats_model_dir, tmp_path
) -> None:
    from medseg.datasets.synthetic import synthesize
    from medseg.pipelines.prediction.predict import predict

    (case,) = synthesize("brats", tmp_path / "brats", cases=1, shape=(32, 32, 24), seed=2)
    predict(brats_model_dir, [str(case)], tmp_path / "out", device="cpu", show_progress=False)
    expected = np.asarray(nib.load(tmp_path / "out" / f"{case.name}.nii.gz").dataobj)
    model = medseg.load_model(brats_model_dir, device="cpu")
    channels = [
        nib.load(case / f"{case.name}_{name}.nii.gz")
        for name in model.config.preprocessing.channels
    ]
    assert np.array_equal(np.asarray(model.segment(channels).dataobj), expected)
    stacked = np.stack([np.asarray(image.dataobj) for image in channels])
    assert np.array_equal(model.segment(stacked, affine=channels[0].affine), expected)
