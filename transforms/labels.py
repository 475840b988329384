"""Label values on disk <-> network targets and back, for any ``LabelScheme``.

MONAI's ``ConvertToMultiChannelBasedOnBratsClassesd`` covers the BraTS regions only and
has no inverse; these transforms serve every scheme (BraTS regions, LiTS classes, EM,
ISIC) from the scheme's data, and ``paint_labels`` writes a label map back.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from medseg.datasets.base import LabelScheme


def labels_to_target(label: torch.Tensor, scheme: LabelScheme) -> torch.Tensor:
    """Map a label map ``(1, *spatial)`` of disk values to the network's target.

    Regions: ``(R, *spatial)`` float32 masks, one per region. Classes: ``(1, *spatial)``
    float32 class indices (the position of each value in ``scheme.values``); values outside
    the scheme become background.
    """
    values = label[0] if label.ndim > 1 and label.shape[0] == 1 else label
    if scheme.mode == "regions":
        masks = [torch.isin(values, torch.tensor(v, dtype=values.dtype)) for v in scheme.values]
        return torch.stack(masks).to(torch.float32)
    target = torch.zeros_like(values, dtype=torch.float32)
    for index, (value,) in enumerate(scheme.values):
        target[values == value] = index
    return target[None]


class LabelsToTargetd(MapTransform):
    """Dictionary transform applying ``labels_to_target`` to ``keys`` (plain tensors out)."""

    def __init__(self, keys: KeysCollection, scheme: LabelScheme) -> None:
        super().__init__(keys)
        self.scheme = scheme

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Return a copy of ``data`` with each key's label map replaced by its target."""
        result = dict(data)
        for key in self.key_iterator(result):
            result[key] = labels_to_target(torch.as_tensor(result[key]), self.scheme)
        return result


def probabilities(logits: torch.Tensor, scheme: LabelScheme) -> torch.Tensor:
    """Logits ``(B, C, *spatial)`` -> probabilities: sigmoid for regions, softmax for classes."""
    return torch.sigmoid(logits) if scheme.mode == "regions" else torch.softmax(logits, dim=1)


def paint_labels(
    probability: torch.Tensor | np.ndarray, scheme: LabelScheme, threshold: float = 0.5
) -> np.ndarray:
    """Probabilities ``(C, *spatial)`` -> label map ``(*spatial)`` uint8 of disk values.

    Regions are painted in ``scheme.paint_order`` where their probability exceeds
    ``threshold``; classes take the value of the most probable class.
    """
    probability = torch.as_tensor(probability)
    if scheme.mode == "regions":
        labels = torch.zeros(probability.shape[1:], dtype=torch.uint8)
        for index in scheme.paint_order:
            labels[probability[index] > threshold] = scheme.paint[index]
        return labels.numpy()
    lookup = torch.tensor([v[0] for v in scheme.values], dtype=torch.uint8)
    return lookup[probability.argmax(0)].numpy()


def binary_prediction(logits: torch.Tensor, scheme: LabelScheme) -> torch.Tensor:
    """Logits ``(B, C, *spatial)`` -> one binary mask per scored structure ``(B, S, *spatial)``.

    Regions: sigmoid > 0.5 per region. Classes: one-hot argmax without the background.
    """
    if scheme.mode == "regions":
        return (logits > 0).to(torch.float32)
    indices = logits.argmax(1)
    return torch.stack([indices == k for k in range(1, logits.shape[1])], dim=1).float()


def binary_target(target: torch.Tensor, scheme: LabelScheme) -> torch.Tensor:
    """Targets from ``labels_to_target`` (batched) -> masks ``(B, S, *spatial)`` per structure."""
    if scheme.mode == "regions":
        return target.float()
    indices = target[:, 0].long()
    return torch.stack([indices == k for k in range(1, scheme.out_channels)], dim=1).float()


class SamplingMasksd(MapTransform):
    """Store, under ``<key>_sampling``, the boolean masks that random crops of the target in
    ``keys`` draw their centres from (boolean, not uint8: MONAI takes the background as
    ``~mask``, which on uint8 is never zero).

    ``by_class=False``: one channel, the foreground (any class or region), for
    ``monai.transforms.RandCropByPosNegLabeld`` (given the target itself, it would take a
    multi-channel target's first channel for background and drop BraTS's first region).
    ``by_class=True``: the background (for regions, the voxels in no region), then one mask
    per foreground class or region (``binary_target``'s), for
    ``monai.transforms.RandCropByLabelClassesd``. A byte per voxel and channel, cheap to
    cache, where the voxel indices MONAI draws from would take 8 bytes per voxel.
    """

    def __init__(self, keys: KeysCollection, scheme: LabelScheme, *, by_class: bool) -> None:
        super().__init__(keys)
        self.scheme = scheme
        self.by_class = by_class

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Return a copy of ``data`` with the masks added."""
        result = dict(data)
        for key in self.key_iterator(result):
            target = torch.as_tensor(result[key])[None]
            foreground = binary_target(target, self.scheme)[0].bool()
            background = ~foreground.any(dim=0, keepdim=True)
            masks = torch.cat([background, foreground]) if self.by_class else ~background
            result[f"{key}_sampling"] = masks
        return result
