"""Validation during training: the same sliding-window inference ``medseg predict`` runs."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn
from monai.metrics import compute_dice

from medseg.datasets.base import LabelScheme
from medseg.pipelines.inference import sliding_window_predict
from medseg.pipelines.model_dir import InferenceSpec
from medseg.transforms.labels import binary_prediction, binary_target


def validate(
    network: nn.Module,
    batches: Iterable[dict[str, Any]],
    scheme: LabelScheme,
    inference: InferenceSpec,
    device: torch.device,
) -> list[dict[str, Any]]:
    """Dice per case and structure on preprocessed validation volumes.

    ``batches`` yields ``{"id", "image" (1, C, *spatial), "label"}`` as
    ``validation_transforms`` makes them. Returns one row per case,
    ``{"case": id, <structure name>: dice, ...}``; an empty reference scores 1 when the
    prediction is empty too and 0 otherwise (never NaN).
    """
    names = list(scheme.foreground)
    rows = []
    for batch in batches:
        logits = sliding_window_predict(
            network,
            batch["image"],
            roi_size=inference.roi_size,
            overlap=inference.overlap,
            sw_batch_size=inference.sw_batch_size,
            mode=inference.mode,
            device=device,
        )
        predicted = binary_prediction(logits, scheme)
        reference = binary_target(torch.as_tensor(batch["label"]).as_subclass(torch.Tensor), scheme)
        dice = compute_dice(predicted, reference, include_background=True, ignore_empty=False)
        for index, case_id in enumerate(batch["id"]):
            rows.append({"case": case_id} | {n: float(dice[index, k]) for k, n in enumerate(names)})
    return rows


def summarise(rows: list[dict[str, Any]], names: list[str]) -> dict[str, float]:
    """Mean Dice per structure (``val/dice/<name>``) and over structures (``val/dice_mean``)."""
    means = {name: sum(row[name] for row in rows) / len(rows) for name in names}
    metrics = {f"val/dice/{name}": value for name, value in means.items()}
    metrics["val/dice_mean"] = sum(means.values()) / len(means)
    return metrics
