"""Refuse images that would be segmented silently wrong: NaN or infinite voxels.

Window clipping turns NaN into the window's top and z-scoring spreads it to a whole
volume, so a non-finite voxel must stop a case before normalisation, not after.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from medseg.errors import CaseError


class RequireFinited(MapTransform):
    """Raise ``CaseError`` naming the file when an image holds NaN or infinite voxels."""

    def __init__(self, keys: KeysCollection) -> None:
        super().__init__(keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> Mapping[Hashable, Any]:
        """Return ``data`` unchanged when every voxel of every key is finite."""
        for key in self.key_iterator(data):
            image = torch.as_tensor(data[key])
            bad = int((~torch.isfinite(image)).sum())
            if bad:
                meta = getattr(data[key], "meta", {})
                source = meta.get("filename_or_obj", key)
                raise CaseError(f"{source}: {bad} NaN or infinite voxels; fix or mask them first")
        return data
