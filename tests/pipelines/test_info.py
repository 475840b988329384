"""``model_info``: a model's network, size, labels, preprocessing, training record and
provenance, as data and as a table a person reads."""

from __future__ import annotations

import json

from rich.console import Console

from medseg.pipelines.info import info_table, model_info
from medseg.pipelines.model_dir import build_from_config, read_model_config, save_model_dir


def rendered(info: dict) -> str:
    console = Console(record=True, width=160)
    console.print(info_table(info))
    return console.export_text()


def test_an_untrained_model_is_described_without_a_training_record(brats_model_dir) -> None:
    info = model_info(brats_model_dir)
    config = read_model_config(brats_model_dir)
    full = build_from_config(config)
    network = info["network"]
    assert network["name"] == "unetpp"
    assert network["preset"] == "tiny"
    assert (network["in_channels"], network["out_channels"]) == (4, 3)
    assert network["parameters"] == sum(p.numel() for p in full.parameters())
    assert network["parameters_by_level"] == {
        1: full.level_parameter_count(1),
        2: network["parameters"],
    }
    assert info["labels"]["names"] == ["TC", "WT", "ET"]
    assert info["preprocessing"]["channels"] == ["flair", "t1", "t1ce", "t2"]
    assert info["inference"]["roi_size"] == [16, 16, 16]
    assert info["training"] == {}
    assert info["provenance"] == {
        "medseg_version": config.medseg_version,
        "git_commit": None,
        "dataset_fingerprint": None,
        "mlflow_run_id": None,
    }
    json.dumps(info)  # JSON-ready, for a --json output

    text = rendered(info)
    assert "unetpp (tiny), 3D" in text
    assert f"{network['parameters']:,}" in text
    assert "regions (sigmoid per channel)" in text
    assert "WT, TC, ET" in text  # the paint order
    assert "nothing (untrained" in text
    assert "not recorded" in text


def test_training_record_and_provenance_are_shown(brats_model_dir, tmp_path) -> None:
    config = read_model_config(brats_model_dir)
    provenance = {
        "epoch": 12,
        "validation": {"val/dice_mean": 0.94512, "val/dice/WT": 0.95},
        "git_commit": "a" * 40,
        "dataset_fingerprint": "f" * 64,
    }
    trained = save_model_dir(
        tmp_path / "trained",
        config.model_copy(update={"provenance": provenance}),
        build_from_config(config),
    )
    info = model_info(trained)
    assert info["training"] == {"epoch": 12, "validation": provenance["validation"]}
    assert info["provenance"]["git_commit"] == "a" * 40
    assert info["provenance"]["dataset_fingerprint"] == "f" * 64
    text = rendered(info)
    for expected in ("validation.val/dice_mean", "0.9451", "a" * 40, "f" * 64, "epoch"):
        assert expected in text

    pruned_provenance = {
        "pruned_from": str(trained),
        "parent": provenance,
        "pruning": {"level": 1, "table": [{"level": 1}, {"level": 2}]},
    }
    pruned_config = config.model_copy(
        update={
            "provenance": pruned_provenance,
            "network": config.network.model_copy(
                update={"options": config.network.options | {"prune_level": 1}}
            ),
        }
    )
    pruned = save_model_dir(tmp_path / "pruned", pruned_config, build_from_config(pruned_config))
    info = model_info(pruned)
    assert info["provenance"]["git_commit"] == "a" * 40  # found through the parent
    assert info["network"]["parameters_by_level"] == {1: info["network"]["parameters"]}
    text = rendered(info)
    assert "pruning.table" in text
    assert "2 rows" in text
    assert "parent.validation.val/dice_mean" in text
