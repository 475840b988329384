"""Swin UNETR (Hatamizadeh et al., "Swin UNETR: Swin Transformers for Semantic Segmentation
of Brain Tumors in MRI Images", BrainLes 2021 / arXiv 2201.01266), 2D and 3D.

Follows the paper's method section and overview figure: a Swin transformer encoder (patch
size 2, window 7, depths 2-2-2-2, heads 3-6-12-24, feature size 48) whose five resolutions
feed a convolutional decoder through residual skip blocks. The network is MONAI's
``monai.networks.nets.SwinUNETR``, the authors' own implementation; this module only adds
presets and input-size checks whose errors say how to pad (MONAI's says only which
dimension is wrong, and a 32-voxel input fails inside PyTorch's instance norm).

Differences from the paper: none in the ``paper`` preset (62.19 M parameters with 4 input
and 3 output channels, as in the BraTS 2021 setting). The ``small`` and ``tiny`` presets
shrink the feature size (24, 12) and, for ``tiny``, the heads and the window, so the
network trains on a CPU; they are not from the paper.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.networks.nets import SwinUNETR as MonaiSwinUNETR

from medseg.networks._registry import Abilities, preset_options, register_network

PRESETS: dict[str, dict[str, Any]] = {
    # The paper's BraTS 2021 network: feature size 48, depths 2-2-2-2, heads 3-6-12-24,
    # window 7, patch 2.
    "paper": {
        "feature_size": 48,
        "depths": (2, 2, 2, 2),
        "num_heads": (3, 6, 12, 24),
        "window_size": 7,
        "patch_size": 2,
    },
    "small": {
        "feature_size": 24,
        "depths": (2, 2, 2, 2),
        "num_heads": (3, 6, 12, 24),
        "window_size": 7,
        "patch_size": 2,
    },
    # Window 4 tiles the 16-8-4-2 token grids of a 32-voxel input exactly.
    "tiny": {
        "feature_size": 12,
        "depths": (2, 2, 2, 2),
        "num_heads": (1, 2, 4, 8),
        "window_size": 4,
        "patch_size": 2,
    },
}


class SwinUNETR(MonaiSwinUNETR):
    """MONAI's Swin UNETR with an input check that says how to pad.

    Takes every argument of ``monai.networks.nets.SwinUNETR`` (``in_channels``,
    ``out_channels``, ``spatial_dims``, ``feature_size``, ``depths``, ``num_heads``,
    ``window_size``, ``patch_size``, ...).

    ``forward(x)`` maps ``(B, C_in, *spatial)`` (float32, each spatial size divisible by
    ``patch_size ** 5``, i.e. 32, and with instance norm not all equal to 32) to logits
    ``(B, C_out, *spatial)``; it raises ``ValueError`` naming the padding to apply
    otherwise.
    """

    def input_divisor(self) -> tuple[int, ...]:
        """Per spatial axis, what every input size must divide by (``patch_size ** 5``)."""
        spatial_dims = len(self.swinViT.patch_embed.patch_size)  # MONAI keeps no spatial_dims
        return (self.patch_size**5,) * spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, C_out, *spatial)`` for ``x`` of shape ``(B, C_in, *spatial)``."""
        divisor = self.patch_size**5
        spatial = tuple(x.shape[2:])
        if any(size % divisor for size in spatial):
            padded = tuple(-(-size // divisor) * divisor for size in spatial)
            raise ValueError(
                f"Swin UNETR needs each spatial size divisible by {divisor} "
                f"(patch_size**5), got {spatial}; pad the input to {padded} "
                f"(e.g. monai.transforms.DivisiblePad(k={divisor})) or crop it"
            )
        try:
            return super().forward(x)
        except ValueError as error:
            # PyTorch's message blames training mode; the cause is the input size.
            if "more than 1 spatial element" not in str(error):
                raise
            raise ValueError(
                f"Swin UNETR's instance norm needs more than one voxel at its 1/{divisor} "
                f"bottleneck, got {spatial}; pad at least one dimension to {2 * divisor}"
            ) from error


@register_network(
    "swin_unetr", network=SwinUNETR, presets=PRESETS, abilities=Abilities(spatial_dims=(2, 3))
)
def swin_unetr(
    *,
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    preset: str = "paper",
    **options: Any,
) -> SwinUNETR:
    """Swin UNETR (Hatamizadeh et al., 2022) built from ``PRESETS[preset]``, options override."""
    # MONAI's fused-attention path runs only without autograd (inference), with the same
    # outputs; on the CPU it cut the small preset's forward by 30 %.
    arguments = {"use_flash_attention": True} | preset_options(PRESETS, "swin_unetr", preset)
    arguments |= options
    return SwinUNETR(
        in_channels=in_channels,
        out_channels=out_channels,
        spatial_dims=spatial_dims,
        **arguments,
    )
