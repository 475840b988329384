"""``medseg info``: what a model is, what it takes, how it was trained and where it came from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medseg.pipelines.label_table import label_table, table_as_data
from medseg.pipelines.model_dir import (
    CONFIG_FILE,
    ModelConfig,
    open_model,
    parameter_counts,
    read_model_config,
    recorded_parameter_counts,
)

# Keys of a model's ``provenance`` that say where it came from; the rest say how it trained.
PROVENANCE_KEYS = ("git_commit", "dataset_fingerprint", "mlflow_run_id")


def model_info(model: str | Path) -> dict[str, Any]:
    """Describe ``model`` (anything ``open_model`` takes) as JSON-ready data.

    Returns ``source``; ``network`` (name, preset, spatial_dims, in/out channels, options,
    ``parameters`` and, for UNet++, ``parameters_by_level``); ``labels`` (the label
    scheme); ``label_table`` (what each label map value means: ``LabelEntry`` data);
    ``preprocessing``; ``inference`` (sliding-window settings); ``postprocessing``
    (rules); ``training`` (what training recorded: epoch, validation metrics, ...); and
    ``provenance`` (``medseg_version``, ``git_commit``, ``dataset_fingerprint``, the
    training run's ``mlflow_run_id``; None when not recorded); ``plan`` (what training's
    plan decided, empty without one). Raises ``ConfigError`` when the model cannot be
    opened.
    """
    config, counts = _config_and_counts(model)
    described = {
        "name": config.network.name,
        "preset": config.network.preset,
        "spatial_dims": config.network.spatial_dims,
        "in_channels": config.network.in_channels,
        "out_channels": config.network.out_channels,
        "options": config.network.options,
        **counts,
    }
    recorded = dict(config.provenance)
    return {
        "source": str(model),
        "network": described,
        "labels": {key: value for key, value in config.labels.items() if key != "table"},
        "label_table": table_as_data(label_table(config)),
        "preprocessing": config.preprocessing.model_dump(mode="json"),
        "inference": config.inference.model_dump(mode="json"),
        "postprocessing": config.postprocessing.model_dump(mode="json"),
        "plan": config.plan,
        "training": {k: v for k, v in recorded.items() if k not in PROVENANCE_KEYS},
        "provenance": {
            "medseg_version": config.medseg_version,
            **{key: _recorded(recorded, key) for key in PROVENANCE_KEYS},
        },
    }


def _config_and_counts(model: str | Path) -> tuple[ModelConfig, dict[str, Any]]:
    """The model's config and ``parameter_counts``: for a local model or run directory
    whose weights recorded them, from its files alone (no torch, no MONAI: fast); else by
    loading the network."""
    folder = Path(model)
    if not (folder / CONFIG_FILE).is_file():
        folder = folder / "model"
    if (folder / CONFIG_FILE).is_file():
        counts = recorded_parameter_counts(folder)
        if counts is not None:
            return read_model_config(folder), counts
    config, network = open_model(model)
    return config, parameter_counts(network, config.network.name)


def _recorded(provenance: Any, key: str) -> Any:
    # A pruned model keeps the model it was pruned from under "parent".
    while isinstance(provenance, dict):
        if provenance.get(key) is not None:
            return provenance[key]
        provenance = provenance.get("parent")
    return None


def info_table(info: dict[str, Any]) -> Any:
    """A ``rich.table.Table`` of ``model_info``'s result: one row per fact, grouped by
    section (network, labels, preprocessing, inference, training, provenance).
    """
    from rich.table import Table

    table = Table(title=f"medseg model: {info['source']}", show_header=False, title_justify="left")
    table.add_column("section", style="bold")
    table.add_column("key", style="cyan")
    table.add_column("value")
    for section, rows in _sections(info):
        for index, (key, value) in enumerate(rows):
            table.add_row(section if index == 0 else "", key, value)
        table.add_section()
    return table


def _sections(info: dict[str, Any]) -> list[tuple[str, list[tuple[str, str]]]]:
    network = info["network"]
    network_rows = [
        ("network", f"{network['name']} ({network['preset']}), {network['spatial_dims']}D"),
        ("channels", f"{network['in_channels']} in, {network['out_channels']} out"),
        ("parameters", _count(network["parameters"])),
    ]
    network_rows += [
        (f"parameters at level {level}", _count(count))
        for level, count in network.get("parameters_by_level", {}).items()
    ]
    if network["options"]:
        network_rows.append(("options", _text(network["options"])))
    training_rows = _flatten("", info["training"])
    post = info["postprocessing"]
    provenance = info["provenance"]
    return [
        ("network", network_rows),
        ("labels", _label_rows(info["labels"])),
        ("label values", _value_rows(info["label_table"])),
        ("preprocessing", [(k, _text(v)) for k, v in info["preprocessing"].items()]),
        ("inference", [(k, _text(v)) for k, v in info["inference"].items()]),
        ("postprocessing", [(k, _text(v)) for k, v in post.items() if v] or [("rules", "none")]),
        ("plan", _plan_rows(info["plan"])),
        (
            "training",
            training_rows or [("recorded", "nothing (untrained or not from medseg train)")],
        ),
        ("provenance", [(k, _text(v) if v else "not recorded") for k, v in provenance.items()]),
    ]


def _plan_rows(plan: dict[str, Any]) -> list[tuple[str, str]]:
    if not plan:
        return [("plan", "none (trained without planning)")]
    decided = plan.get("decided_by", {})
    shown = ("spacing", "normalization", "foreground_crop", "patch_size", "batch_size")
    rows = [(key, f"{_text(plan.get(key))} ({decided.get(key, 'config')})") for key in shown]
    rows.append(("network options", _text(plan.get("network", {}).get("options", {}))))
    rows.append(
        (
            "memory",
            f"about {plan.get('memory_estimate_gb')} GB of {plan.get('memory_budget_gb')} GB "
            f"on {plan.get('device')}",
        )
    )
    return rows


def _flatten(prefix: str, value: Any) -> list[tuple[str, str]]:
    if isinstance(value, dict):
        rows = []
        for key, item in value.items():
            rows += _flatten(f"{prefix}.{key}" if prefix else str(key), item)
        return rows
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        return [(prefix, f"{len(value)} rows")]
    return [(prefix, _text(value))]


def _label_rows(labels: dict[str, Any]) -> list[tuple[str, str]]:
    pairs = zip(labels["names"], labels["values"], strict=True)
    if labels["mode"] == "regions":
        rows = [(name, "region of values " + _text(values)) for name, values in pairs]
        order = ", ".join(labels["names"][index] for index in labels["paint_order"])
        return [("mode", "regions (sigmoid per channel)"), *rows, ("paint order", order)]
    rows = [(name, f"class of value {values[0]}") for name, values in pairs]
    return [("mode", "classes (softmax)"), *rows]


def _value_rows(table: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [
        (
            str(entry["value"]),
            f"{entry['name']} ({entry['abbreviation']}; label {entry['key']}; "
            f"RGB {_text(entry['colour'])}; {entry['type']['meaning']} "
            f"{entry['type']['scheme']} {entry['type']['value']})",
        )
        for entry in table
    ]


def _count(count: int) -> str:
    return f"{count:,} ({count / 1e6:.2f} M)"


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{key}={_text(item)}" for key, item in value.items()) or "-"
    if isinstance(value, list | tuple):
        return ", ".join(_text(item) for item in value) or "-"
    return "-" if value is None else str(value)
