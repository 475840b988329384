"""Segmentation losses built from MONAI's, with deep-supervision weighting across heads.

MONAI's ``DiceCELoss`` applies a softmax cross-entropy to any multi-channel output, even
with ``sigmoid=True``, which is wrong for overlapping regions (BraTS TC/WT/ET); the
compound losses here pair MONAI's Dice with the cross-entropy that fits the scheme:
binary per region, categorical per class.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.losses import DiceLoss, FocalLoss

from medseg.datasets.base import LabelScheme


class _CrossEntropy(nn.Module):
    """Cross-entropy on targets from ``labels_to_target``: BCE for regions, CE for classes."""

    def __init__(self, regions: bool, weight: Sequence[float] | None = None) -> None:
        super().__init__()
        self.regions = regions
        self.register_buffer("weight", None if weight is None else torch.tensor(weight))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.regions:
            return nn.functional.binary_cross_entropy_with_logits(logits, target)
        return nn.functional.cross_entropy(logits, target[:, 0].long(), weight=self.weight)


class _Sum(nn.Module):
    """The sum of several losses of the same (logits, target) pair."""

    def __init__(self, *terms: nn.Module) -> None:
        super().__init__()
        self.terms = nn.ModuleList(terms)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(term(logits, target) for term in self.terms)


def segmentation_loss(
    name: str, scheme: LabelScheme, class_weights: Sequence[float] | None = None
) -> nn.Module:
    """The loss ``name`` (``dice_ce``, ``dice_focal``, ``dice``, ``ce``) for ``scheme``.

    Takes logits ``(B, C, *spatial)`` and targets from ``labels_to_target``: region masks
    ``(B, R, *spatial)`` (sigmoid outputs) or class indices ``(B, 1, *spatial)`` (softmax
    outputs). Dice is computed over the whole batch (nnU-Net's batch Dice), so patches
    without foreground do not each count as a total miss. ``class_weights`` (classes only)
    weight the cross-entropy.
    """
    regions = scheme.mode == "regions"
    activation = {"sigmoid": True} if regions else {"softmax": True, "to_onehot_y": True}
    dice = DiceLoss(**activation, batch=True)
    cross_entropy = _CrossEntropy(regions, None if regions else class_weights)
    if name == "dice_ce":
        return _Sum(dice, cross_entropy)
    if name == "dice_focal":
        focal = FocalLoss(to_onehot_y=not regions, use_softmax=not regions)
        return _Sum(dice, focal)
    if name == "dice":
        return dice
    if name == "ce":
        return cross_entropy
    raise ValueError(f"unknown loss {name!r}")


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of ``loss`` over a list of heads (final first), weights halving per head.

    As nnU-Net does, head k gets weight 2**-k and the weights are normalised to sum to 1.
    A single tensor (no deep supervision) passes straight to ``loss``.
    """

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(
        self, output: torch.Tensor | list[torch.Tensor], target: torch.Tensor
    ) -> torch.Tensor:
        """``output``: logits or a list of logits at the target's resolution."""
        if isinstance(output, torch.Tensor):
            return self.loss(output, target)
        weights = torch.tensor([0.5**k for k in range(len(output))])
        weights = weights / weights.sum()
        return sum(w * self.loss(head, target) for w, head in zip(weights, output, strict=True))
