"""Optimisers and per-iteration learning-rate schedules (warm-up, cosine, poly)."""

from __future__ import annotations

import math

import torch


def make_optimizer(
    name: str, parameters: object, lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """AdamW, or SGD with Nesterov momentum 0.99 (nnU-Net's choice)."""
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(
        parameters, lr=lr, momentum=0.99, nesterov=True, weight_decay=weight_decay
    )


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the base learning rate at iteration ``step`` of ``total``.

    Linear warm-up over ``warmup`` iterations, then ``cosine`` (to 0), ``poly`` (exponent
    0.9, nnU-Net) or ``constant``.
    """
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "poly":
        return (1 - progress) ** 0.9
    return 1.0
