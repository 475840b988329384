"""Validation during training: the same sliding-window inference ``medseg predict`` runs."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
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
    *,
    loss: nn.Module | None = None,
    on_case: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Dice per case and structure on preprocessed validation volumes.

    ``batches`` yields ``{"id", "image" (1, C, *spatial), "label"}`` as
    ``validation_transforms`` makes them. Returns one row per case,
    ``{"case": id, <structure name>: dice, ...}``; an empty reference scores 1 when the
    prediction is empty too and 0 otherwise (never NaN). With ``loss`` (a CPU module taking
    whole-volume logits and the target) each row also holds ``"loss"``; ``on_case(id)`` is
    called after each case.
    """
    rows: list[dict[str, Any]] = []
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
        # The loss of the whole volume at once: one number per batch of one case.
        extra = {} if loss is None else {"loss": float(loss(logits, target_of(batch)))}
        for row in dice_rows(logits, batch["label"], batch["id"], scheme):
            rows.append(row | extra)
            if on_case is not None:
                on_case(row["case"])
    return rows


def target_of(batch: dict[str, Any]) -> torch.Tensor:
    """The batch's ``label`` (a target from ``labels_to_target``) as a plain tensor."""
    return torch.as_tensor(batch["label"]).as_subclass(torch.Tensor)


def dice_rows(
    logits: torch.Tensor, labels: Any, case_ids: Sequence[str], scheme: LabelScheme
) -> list[dict[str, Any]]:
    """Dice per case and structure of a batch: the rows validation and pruning report.

    ``logits`` are ``(B, C_out, *spatial)`` network outputs, ``labels`` the label maps
    ``(B, 1, *spatial)`` of disk values on the same grid, ``case_ids`` one id per batch
    item. Returns ``[{"case": id, <structure name>: dice, ...}]``, structures in
    ``scheme.foreground`` order; an empty reference scores 1 when the prediction is empty
    too and 0 otherwise (never NaN).
    """
    predicted = binary_prediction(logits, scheme)
    reference = binary_target(torch.as_tensor(labels).as_subclass(torch.Tensor), scheme)
    dice = compute_dice(predicted, reference, include_background=True, ignore_empty=False)
    names = list(scheme.foreground)
    return [
        {"case": case_id} | {name: float(dice[index, k]) for k, name in enumerate(names)}
        for index, case_id in enumerate(case_ids)
    ]


def summarise(rows: list[dict[str, Any]], names: list[str]) -> dict[str, float]:
    """Mean Dice per structure (``val/dice/<name>``), over structures (``val/dice_mean``)
    and, when the rows hold it, the mean loss (``val/loss``)."""
    means = {name: sum(row[name] for row in rows) / len(rows) for name in names}
    metrics = {f"val/dice/{name}": value for name, value in means.items()}
    metrics["val/dice_mean"] = sum(means.values()) / len(means)
    if rows and all("loss" in row for row in rows):
        metrics["val/loss"] = sum(row["loss"] for row in rows) / len(rows)
    return metrics
