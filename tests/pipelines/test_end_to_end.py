"""The main job end to end through the CLI: synth -> train -> predict -> evaluate."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import yaml

from medseg.datasets import discover

TINY_RUN = {
    "data": {"layout": "brats", "folds": 4, "fold": 0},
    "network": {
        "name": "unetpp",
        "preset": "tiny",
        "options": {"features": [8, 16, 32, 64], "norm": "batch"},
    },
    "transforms": {"patch_size": [32, 32, 32], "samples_per_case": 8},
    "train": {"epochs": 12, "batch_size": 2, "lr": 0.01, "val_every": 6, "warmup_epochs": 1},
    "infer": {"overlap": 0.25, "sw_batch_size": 4},
    "tracking": {"experiment": "e2e"},
}


def chance_dice(reference: np.ndarray, brain: np.ndarray) -> float:
    """Dice of the trivial answer 'the whole brain is this region'."""
    return 2 * reference.sum() / (reference.sum() + brain.sum())


@pytest.mark.slow
def test_synth_train_predict_evaluate(tmp_path, brats_phantoms, mlflow_uri, medseg_cli, all_cores):
    config = tmp_path / "tiny.yaml"
    settings = TINY_RUN | {"output": str(tmp_path / "run")}
    settings["data"] = settings["data"] | {"root": str(brats_phantoms["train"])}
    settings["label_table"] = {"ET": {"name": "Enhancing tumor", "colour": [0, 0, 255]}}
    config.write_text(yaml.safe_dump(settings))

    trained = medseg_cli("train", config)
    assert trained.code == 0, trained.err
    model = tmp_path / "run" / "model"
    assert sorted(p.name for p in model.iterdir()) == ["config.yaml", "weights.safetensors"]

    stored = yaml.safe_load((model / "config.yaml").read_text())["labels"]["table"]
    assert [(entry["value"], entry["name"]) for entry in stored] == [
        (1, "Necrotic tumour core"),
        (2, "Peritumoural oedema"),
        (4, "Enhancing tumor"),
    ]

    predicted = medseg_cli("predict", model, brats_phantoms["test"], "--output", tmp_path / "pred")
    assert predicted.code == 0, predicted.err
    label_names = (tmp_path / "pred" / "labels.itksnap.txt").read_text().splitlines()
    assert '4 0 0 255 1 1 1 "Enhancing tumor"' in label_names
    test_cases = discover("brats", brats_phantoms["test"]).cases
    for case in test_cases:
        source = nib.load(case.image[0])
        output = nib.load(tmp_path / "pred" / f"{case.id}.nii.gz")
        assert output.shape == source.shape
        np.testing.assert_allclose(output.affine, source.affine, atol=1e-5)
        assert nib.aff2axcodes(output.affine) == nib.aff2axcodes(source.affine)
        assert output.get_data_dtype() == np.uint8
        assert set(np.unique(np.asarray(output.dataobj))) <= {0, 1, 2, 4}

    evaluated = medseg_cli(
        "evaluate", tmp_path / "pred", brats_phantoms["test"], "-o", tmp_path / "eval"
    )
    assert evaluated.code == 0, evaluated.err
    assert (tmp_path / "eval" / "metrics.csv").is_file()
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    regions = {"TC": (1, 4), "WT": (1, 2, 4), "ET": (4,)}
    for name, values in regions.items():
        chance = np.mean(
            [
                chance_dice(
                    np.isin(np.asarray(nib.load(c.label).dataobj), values),
                    np.asarray(nib.load(c.image[0]).dataobj) > 0,
                )
                for c in test_cases
            ]
        )
        assert summary["labels"][name]["dice"]["mean"] > chance + 0.3, (name, chance)

    import mlflow

    client = mlflow.MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name("e2e")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.params["train.epochs"] == "12"
    assert run.data.params["network.name"] == "unetpp"
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 12
    assert len(client.get_metric_history(run.info.run_id, "val/dice_mean")) == 2
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert artifacts == {"model/config.yaml", "model/weights.safetensors"}
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "validation.csv", "learning_curve.png"} <= top
