"""2.5D input: each slice of a volume with its neighbours as extra channels.

MONAI has no transform that stacks adjacent slices into channels; this one does it for a
whole volume at once, so a 2D network can then run on single slices (training crops of
depth 1, sliding windows of depth 1) and see its neighbours through the channels.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform


def adjacent_slices(image: torch.Tensor, slices: int) -> torch.Tensor:
    """``(C, X, Y, Z)`` -> ``(C * slices, X, Y, Z)``: channel ``c * slices + k`` of slice ``z``
    is channel ``c`` of slice ``z + k - slices // 2``, the edge slices repeated past the ends.

    The metadata of a MONAI ``MetaTensor`` (affine, applied operations) is kept.
    """
    if slices == 1:
        return image
    half = slices // 2
    depth = image.shape[-1]
    index = torch.arange(depth)
    stacked = [
        image[..., torch.clamp(index + offset, 0, depth - 1)] for offset in range(-half, half + 1)
    ]
    return torch.stack(stacked, dim=1).reshape(image.shape[0] * slices, *image.shape[1:])


class AdjacentSlicesd(MapTransform):
    """Dictionary version of ``adjacent_slices`` for ``keys`` (images only, never labels)."""

    def __init__(self, keys: KeysCollection, slices: int) -> None:
        super().__init__(keys)
        self.slices = slices

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Return a copy of ``data`` with each key's volume expanded to 2.5D channels."""
        result = dict(data)
        for key in self.key_iterator(result):
            result[key] = adjacent_slices(result[key], self.slices)
        return result
