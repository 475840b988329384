"""How much bf16 changes a trained model's labels, measured once after training.

bf16 halves the forward's time where the hardware multiplies it (AMX, AVX-512 BF16, CUDA
GPUs; benchmarks/README.md section 11), but whether the labels survive it is a property of
the model: an untrained network, whose logits sit near zero, flipped 0.9 % of its voxels,
and a trained one 0.004 %. So after training, each validation case is segmented twice,
in fp32 and under bf16 autocast, and the share of voxels whose labels agree is written to
the model directory's ``inference.bf16_agreement``; ``resolve_precision``'s ``auto`` runs
bf16 on the CPU only where it is at least ``BF16_AGREEMENT``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from medseg.datasets.base import Case
from medseg.errors import MedsegError
from medseg.pipelines.inference import bf16_runs_natively, resolve_device
from medseg.pipelines.model_dir import ModelConfig, load_model_dir, save_model_dir

if TYPE_CHECKING:
    from medseg.pipelines.training.train import FinishedTraining

logger = logging.getLogger(__name__)

# Bounds the measurement's cost: two sliding-window passes per case.
MAX_CASES = 4


def measure_bf16_agreement(
    config: ModelConfig, network: torch.nn.Module, cases: Sequence[Case], device: torch.device
) -> float | None:
    """The share of voxels (0-1) whose labels (post-processed, on each input's grid) under
    bf16 autocast equal those in fp32, over the first ``MAX_CASES`` of ``cases``, segmented
    by the model (``config``, ``network``) on ``device`` with torch. None where ``device``
    has no native bf16 or ``cases`` is empty. Raises ``CaseError`` for an unusable case."""
    from medseg.pipelines.prediction.segmenter import Segmenter

    if not cases or not bf16_runs_natively(device):
        return None
    fp32 = Segmenter([(config, network)], device)
    bf16 = Segmenter([(config, network)], device, precision=torch.bfloat16)
    equal = total = 0
    for case in cases[:MAX_CASES]:
        # each pass loads its own copy: inverting the preprocessing consumes its record
        reference = fp32.segment(case)
        labels = bf16.segment(case)
        equal += int((labels == reference).sum())
        total += reference.size
    return equal / total


def record_bf16_agreement(
    model_dir: Path, cases: Sequence[Case], device: torch.device
) -> float | None:
    """``measure_bf16_agreement`` of the model in ``model_dir``, written into its
    ``inference.bf16_agreement`` (the directory is rewritten atomically) and returned; None,
    with the directory left as it was, when nothing could be measured."""
    config, network = load_model_dir(model_dir)
    agreement = measure_bf16_agreement(config, network, cases, device)
    if agreement is None:
        logger.info("bf16 agreement not measured: no native bf16 on %s, or no case", device)
        return None
    inference = config.inference.model_copy(update={"bf16_agreement": round(agreement, 6)})
    save_model_dir(model_dir, config.model_copy(update={"inference": inference}), network)
    logger.info(
        "bf16 agreement: labels under bf16 equal fp32's on %.4f %% of the voxels of %d "
        "validation case(s)",
        100 * agreement,
        min(len(cases), MAX_CASES),
    )
    return agreement


def after_training(finished: FinishedTraining) -> None:
    """The post-training step ``medseg train`` always attaches: ``record_bf16_agreement`` on
    the finished run's model and validation cases, on the training device, logged to the
    run's MLflow tracker. A case that cannot be segmented skips it with a warning (the
    model stays usable; prediction then keeps fp32)."""
    try:
        agreement = record_bf16_agreement(
            finished.model_dir, finished.val_cases, resolve_device(finished.config.train.device)
        )
    except MedsegError as error:
        logger.warning("bf16 agreement not measured: %s", error)
        return
    if agreement is not None:
        step = finished.config.train.total_epochs
        finished.tracker.log_metrics({"bf16/label_agreement": agreement}, step=step)
