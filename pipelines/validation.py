"""Validation during training: the same sliding-window inference ``medseg predict`` runs,
or, for a case whose full pass would need more windows than its share of the budget, a
fixed sample of windows (as nnU-Net validates on patches during training and runs the full
sliding window only at the end)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from monai.metrics import compute_dice

from medseg.datasets.base import LabelScheme
from medseg.pipelines.inference import (
    WindowPredictor,
    plain_tensor,
    sliding_window_predict,
    window_shape,
)
from medseg.pipelines.model_dir import InferenceSpec
from medseg.transforms.labels import binary_prediction, binary_target

logger = logging.getLogger(__name__)


def sliding_window_count(spatial: Sequence[int], roi: Sequence[int], overlap: float) -> int:
    """Windows a sliding pass with ``roi`` and ``overlap`` cuts from an image of ``spatial``
    size (MONAI's grid: steps of ``roi * (1 - overlap)``, at least 1, the last window moved
    back to end at the border; an axis no longer than the window takes one)."""
    total = 1
    for size, window in zip(spatial, roi, strict=True):
        step = max(int(window * (1 - overlap)), 1)
        total *= 1 if size <= window else math.ceil((size - window) / step) + 1
    return total


def window_starts(
    label: torch.Tensor, roi: Sequence[int], count: int, seed: int
) -> list[tuple[int, ...]]:
    """``count`` window corners in a case of ``label`` ``(C, *spatial)`` (a class index map
    or one mask per region; any dtype, 0 is background), drawn with
    ``numpy.random.default_rng(seed)``: every other window is centred on a voxel of any
    foreground (as training samples half its patches), the rest are
    placed uniformly; every window lies inside the image on axes at least ``roi`` long
    (corner 0 on shorter ones)."""
    rng = np.random.default_rng(seed)
    spatial = label.shape[1:]
    foreground = torch.nonzero((label != 0).any(0))
    highest = [max(size - window, 0) for size, window in zip(spatial, roi, strict=True)]
    starts = []
    for index in range(count):
        if index % 2 == 0 and len(foreground):
            centre = foreground[int(rng.integers(len(foreground)))].tolist()
            corner = [c - window // 2 for c, window in zip(centre, roi, strict=True)]
        else:
            corner = [int(rng.integers(0, top + 1)) for top in highest]
        starts.append(tuple(min(max(c, 0), top) for c, top in zip(corner, highest, strict=True)))
    return starts


def _crop(volume: torch.Tensor, start: Sequence[int], roi: Sequence[int]) -> torch.Tensor:
    """``volume[:, start:start+roi]`` ``(C, *roi)``, zero-padded at the end where short."""
    region = tuple(slice(s, s + w) for s, w in zip(start, roi, strict=True))
    index = (slice(None), *region)
    window = volume[index]
    padding = []
    for size, want in zip(reversed(window.shape[1:]), reversed(roi), strict=True):
        padding += [0, want - size]
    return torch.nn.functional.pad(window, padding) if any(padding) else window


@torch.inference_mode()
def _sampled_logits_and_labels(
    network: nn.Module,
    image: torch.Tensor,
    label: torch.Tensor,
    inference: InferenceSpec,
    device: torch.device,
    count: int,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of ``count`` sample windows of one case, side by side along the
    first spatial axis: ``(1, C_out, count * roi_0, ...)`` and ``(1, 1, count * roi_0, ...)``."""
    roi = window_shape(inference.roi_size, image.ndim - 1)
    slice_wise = len(roi) > len(inference.roi_size)
    starts = window_starts(label, roi, count, seed)
    windows = torch.stack([_crop(image, start, roi) for start in starts])
    labels = torch.stack([_crop(label, start, roi) for start in starts])
    network.eval()
    predictor = WindowPredictor(network, slice_wise=slice_wise)
    batch = inference.sw_batch_size
    logits = torch.cat(
        [predictor(windows[i : i + batch].to(device)).cpu() for i in range(0, count, batch)]
    )
    return torch.cat(list(logits), dim=1)[None], torch.cat(list(labels), dim=1)[None]


def validate(
    network: nn.Module,
    batches: Iterable[dict[str, Any]],
    scheme: LabelScheme,
    inference: InferenceSpec,
    device: torch.device,
    *,
    loss: nn.Module | None = None,
    max_windows: int | None = None,
    cases: int = 1,
    show_progress: bool = False,
    log_cases: bool = False,
) -> tuple[list[dict[str, Any]], int]:
    """Dice per case and structure on preprocessed validation volumes.

    ``batches`` yields ``{"id", "image" (1, C, *spatial), "label"}`` as
    ``validation_transforms`` makes them, ``cases`` of them. With ``max_windows``, each case
    may run ``max(1, max_windows // cases)`` windows: a case whose full sliding pass needs
    more is scored on that many fixed windows (``window_starts``, seeded by the case's
    position, so every validation of a run scores the same voxels), on the windows' voxels
    together. Returns one row per case, ``{"case": id, <structure name>: dice, ...}``, and
    the number of cases scored on windows; an empty reference scores 1 when the prediction
    is empty too and 0 otherwise (never NaN). With ``loss`` (a CPU module taking the logits
    and the target) each row also holds ``"loss"``. A bar counts the cases (``show_progress``);
    each case's time and Dice is logged at INFO with ``log_cases``, else at DEBUG.
    """
    from medseg.pipelines.progress import task_progress

    names = list(scheme.foreground)
    share = None if max_windows is None else max(1, max_windows // max(cases, 1))
    rows: list[dict[str, Any]] = []
    sampled = 0
    with task_progress("validating", cases, show_progress) as advance:
        for position, batch in enumerate(batches):
            started = time.perf_counter()
            image = batch["image"]
            label = torch.as_tensor(batch["label"]).as_subclass(torch.Tensor)
            roi = window_shape(inference.roi_size, image.ndim - 2)
            needed = sliding_window_count(image.shape[2:], roi, inference.overlap)
            if share is not None and needed > share and image.shape[0] == 1:
                plain = plain_tensor(image)
                logits, label = _sampled_logits_and_labels(
                    network, plain[0], label[0], inference, device, share, seed=position
                )
                sampled += 1
            else:
                logits = sliding_window_predict(
                    network,
                    image,
                    roi_size=inference.roi_size,
                    overlap=inference.overlap,
                    sw_batch_size=inference.sw_batch_size,
                    mode=inference.mode,
                    device=device,
                )
            # The loss of the whole volume (or its windows) at once: one number per case.
            extra = {} if loss is None else {"loss": float(loss(logits, label))}
            for row in dice_rows(logits, label, batch["id"], scheme):
                rows.append(row | extra)
                advance(row["case"])
            logger.log(
                logging.INFO if log_cases else logging.DEBUG,
                "validated %s (%d/%d) in %.1f s: %s",
                ", ".join(batch["id"]),
                position + 1,
                cases,
                time.perf_counter() - started,
                " ".join(f"{n} {rows[-1][n]:.3f}" for n in names),
            )
    return rows, sampled


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
