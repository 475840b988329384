"""Refuse images that would be segmented silently wrong.

NaN or infinite voxels: window clipping turns NaN into the window's top and z-scoring
spreads it over a whole volume, so a non-finite voxel must stop a case before
normalisation. A constant image (every voxel one value: a blank export, a failed
conversion) has nothing to segment, and z-scoring divides it by a zero deviation.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from medseg.errors import CaseError


class RequireUsableImaged(MapTransform):
    """Raise ``CaseError`` naming the file when an image holds NaN or infinite voxels or is
    constant."""

    def __init__(self, keys: KeysCollection) -> None:
        super().__init__(keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> Mapping[Hashable, Any]:
        """Return ``data`` unchanged when every image is finite and not constant."""
        for key in self.key_iterator(data):
            image = torch.as_tensor(data[key])
            source = getattr(data[key], "meta", {}).get("filename_or_obj", key)
            bad = int((~torch.isfinite(image)).sum())
            if bad:
                raise CaseError(f"{source}: {bad} NaN or infinite voxels; fix or mask them first")
            if image.numel() and bool(image.max() == image.min()):
                raise CaseError(
                    f"{source}: every voxel is {float(image.min()):g}; nothing to segment"
                )
        return data
