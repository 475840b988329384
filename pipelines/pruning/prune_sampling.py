"""Measuring every UNet++ pruning level for about the cost of one prediction.

Dice: head k of a level-L forward equals the level-k forward (the nodes with i + j <= k are
the same computations), so one sliding-window pass that returns every head scores all
levels at once. Time: a convolutional network's forward takes the same time on any window
of a given size, so each level is timed on a fixed sample of windows instead of on every
case, and the time per case is that per-window time times the windows a case needs.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn

from medseg.pipelines.inference import (
    WindowCount,
    WindowPredictor,
    plain_tensor,
    sliding_window_predict,
)
from medseg.pipelines.model_dir import InferenceSpec


class EveryHead(nn.Module):
    """A UNet++ whose forward returns the heads of ``levels`` (ascending) side by side.

    ``forward(x)`` maps ``(B, C_in, *roi)`` to ``(B, len(levels) * C_out, *roi)``: channels
    ``k * C_out .. (k + 1) * C_out`` are the logits of ``levels[k]``, from one forward at the
    deepest of ``levels``.
    """

    def __init__(self, network: nn.Module, levels: Sequence[int]) -> None:
        super().__init__()
        self.network = network
        self.levels = sorted(levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Every requested head's logits, concatenated along channels (see class doc)."""
        deepest = self.levels[-1]
        heads = self.network(x, prune_level=deepest, every_head=True)
        return torch.cat([heads[deepest - level] for level in self.levels], dim=1)


def level_logits(
    network: nn.Module,
    image: torch.Tensor,
    levels: Sequence[int],
    inference: InferenceSpec,
    device: torch.device,
    precision: torch.dtype | None,
    count: WindowCount | None = None,
) -> dict[int, torch.Tensor]:
    """Logits ``(B, C_out, *spatial)`` float32 per level for ``image`` ``(B, C_in, *spatial)``
    from one sliding-window pass of ``network`` (a UNet++) as ``medseg predict`` runs it
    (empty windows reused); ``count`` receives the window tally."""
    logits = sliding_window_predict(
        EveryHead(network, levels),
        image,
        roi_size=inference.roi_size,
        overlap=inference.overlap,
        sw_batch_size=inference.sw_batch_size,
        mode=inference.mode,
        device=device,
        precision=precision,
        skip_empty=True,
        count=count,
    )
    per_level = logits.chunk(len(levels), dim=1)
    return dict(zip(sorted(levels), per_level, strict=True))


def sample_windows(image: torch.Tensor, roi: Sequence[int], count: int, seed: int) -> torch.Tensor:
    """``count`` windows of size ``roi`` cut from ``image`` ``(C, *spatial)`` at positions
    drawn uniformly with ``numpy.random.default_rng(seed)`` (the same positions for the same
    seed and shape); axes shorter than ``roi`` are zero-padded at the end, as a sliding
    pass pads them. Returns ``(count, C, *roi)`` float32 on the CPU."""
    plain = plain_tensor(image)
    plain = plain.detach().to("cpu", torch.float32)
    padding = []
    for size, window in zip(reversed(plain.shape[1:]), reversed(roi), strict=True):
        padding += [0, max(window - size, 0)]
    plain = torch.nn.functional.pad(plain, padding)
    rng = np.random.default_rng(seed)
    windows = []
    for _ in range(count):
        starts = [
            int(rng.integers(0, size - window + 1))
            for size, window in zip(plain.shape[1:], roi, strict=True)
        ]
        region = tuple(slice(s, s + w) for s, w in zip(starts, roi, strict=True))
        index = (slice(None), *region)
        windows.append(plain[index])
    return torch.stack(windows)


@torch.inference_mode()
def seconds_per_window(
    network: nn.Module,
    windows: torch.Tensor,
    levels: Sequence[int],
    *,
    repeats: int,
    batch_size: int,
    device: torch.device,
    precision: torch.dtype | None,
    slice_wise: bool = False,
) -> dict[int, float]:
    """Median seconds of one window's forward per level: ``windows`` ``(N, C, *window)`` run
    in batches of ``batch_size`` as a sliding pass runs them, one batch of each shape untimed
    per level (caches, allocators) and then all ``repeats`` timed times, the level order
    alternating between repeats so that a drift in machine load touches every level alike."""
    predictor = WindowPredictor(network, slice_wise=slice_wise, precision=precision)
    batches = [windows[i : i + batch_size].to(device) for i in range(0, len(windows), batch_size)]

    def run(level: int, chosen: list[torch.Tensor]) -> float:
        started = time.perf_counter()
        for batch in chosen:
            predictor(batch, prune_level=level)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - started

    for level in levels:
        # one batch of each shape the timed runs meet sets up their kernels and buffers
        run(level, list({tuple(batch.shape): batch for batch in batches}.values()))
    times: dict[int, list[float]] = {level: [] for level in levels}
    for repeat in range(repeats):
        for level in levels if repeat % 2 == 0 else list(levels)[::-1]:
            times[level].append(run(level, batches))
    return {level: statistics.median(values) / len(windows) for level, values in times.items()}


def windows_per_case(total: int, cases: int) -> list[int]:
    """How many of ``total`` sample windows to cut from each of ``cases`` cases: as even a
    share as possible, the first cases taking the remainder, at least one window in all."""
    total = max(total, 1)
    return [total // cases + (index < total % cases) for index in range(cases)]
