"""``Preprocessing``: what a model directory stores about its preprocessing, as data.

Kept apart from the MONAI pipelines that carry it out (``presets.py``), so reading a model's
config (``medseg info``) never imports MONAI.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Normalization = Literal["ct_window", "zscore_image", "zscore_body", "zscore_nonzero", "percentile"]
LEGACY_NORMALIZATION: dict[str, Normalization] = {
    "ct": "ct_window",
    "mri": "zscore_nonzero",
    "em": "percentile",
}
CT_STATISTICS = frozenset({"window_low", "window_high", "mean", "std"})


class Preprocessing(BaseModel):
    """The deterministic steps between a file on disk and the network's input.

    ``channels`` names the image channels in order; ``spatial_dims`` is the data's (3 for
    volumes, 2 for images); ``orientation`` the axis codes images are turned to;
    ``spacing`` the target voxel size in mm (None keeps the input's); ``foreground_crop``
    crops to the body (CT) or the non-zero voxels (MRI); ``slices`` > 1 stacks that many
    adjacent slices as channels for a 2D network (2.5D); ``patch_size`` is the network's
    training patch and sliding-window size (voxels); ``intensity`` holds statistics
    fitted on the training set (CT: ``window_low``, ``window_high``, ``mean``, ``std`` in HU);
    ``normalization`` is the intensity rule planned once for the dataset (see
    ``NORMALIZATIONS``; None: the modality's rule from before planning existed, kept so that
    older model directories predict as they were trained).
    """

    model_config = ConfigDict(extra="forbid")

    layout: str
    modality: str
    channels: list[str]
    spatial_dims: int = 3
    orientation: str = "RAS"
    spacing: list[float] | None = None
    foreground_crop: bool = True
    slices: int = 1
    patch_size: list[int]
    intensity: dict[str, float] = Field(default_factory=dict)
    normalization: Normalization | None = None

    @property
    def slice_wise(self) -> bool:
        """Whether a 2D network runs slice by slice on volumes."""
        return self.spatial_dims == 3 and len(self.patch_size) == 2

    @property
    def normalization_rule(self) -> Normalization:
        """The rule this preprocessing normalises with: the planned one, or the modality's
        rule from before planning existed."""
        return self.normalization or LEGACY_NORMALIZATION.get(self.modality, "zscore_image")

    @property
    def missing_statistics(self) -> list[str]:
        """The fitted statistics the rule needs and ``intensity`` lacks, sorted (only the
        CT window needs any)."""
        if self.normalization_rule != "ct_window":
            return []
        return sorted(CT_STATISTICS - set(self.intensity))
