"""UNet++ (Zhou et al., "UNet++: Redesigning Skip Connections to Exploit Multiscale
Features in Image Segmentation", IEEE TMI 2019), 2D and 3D, with real pruning.

Follows the paper's Section III: nodes X(i, j) (encoder depth i, position j along the
nested skip pathway) where X(i, 0) is the encoder and X(i, j > 0) convolves the
concatenation of X(i, 0..j-1) and the up-sampled X(i+1, j-1) (Eq. 1); a 1x1 head on each
of X(0, 1..L) gives deep supervision (Section III-B); pruning at inference (Section III-C)
keeps only the sub-network that feeds head L, the nodes with i + j <= L.

MONAI's ``BasicUNetPlusPlus`` computes every node whatever head is used; here the forward
pass at level L runs only the nodes that level needs, and ``prune_level`` at construction
builds only those nodes, so a pruned model's weights hold nothing else. Convolution
blocks, pooling and up-sampling are MONAI's (``TwoConv``, ``Pool``, ``UpSample``).

Differences from the paper: normalisation is configurable (the Keras reference has none;
the presets use batch norm in 2D and instance norm in 3D, as nnU-Net does for small
batches), and the depth follows the length of ``features``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from monai.networks.blocks import UpSample
from monai.networks.layers.factories import Conv, Pool
from monai.networks.nets.basic_unet import TwoConv

from medseg.networks._registry import Abilities, preset_options, register_network
from medseg.networks.inference_layout import SplitInputConvolution

PRESETS: dict[str, dict[str, Any]] = {
    # The paper's 2D configuration (Section IV-B): 32-64-128-256-512 filters.
    "paper": {"features": (32, 64, 128, 256, 512), "norm": "batch"},
    "small": {"features": (16, 32, 64, 128, 256), "norm": "instance"},
    "tiny": {"features": (8, 16, 32, 64, 128), "norm": "instance"},
}


def _node_name(depth: int, position: int) -> str:
    return f"x{depth}_{position}"


class UNetPlusPlus(nn.Module):
    """UNet++ with nested dense skips, deep supervision and pruning.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels C_in.
        out_channels: output channels C_out of every head.
        features: filters per encoder depth; ``len(features) - 1`` is the depth D (4 in
            the paper), so pruning levels run 1..D.
        norm: MONAI norm name or (name, args), e.g. ``"batch"``, ``"instance"``.
        act: MONAI activation name or (name, args).
        dropout: dropout rate inside the convolution blocks.
        deep_supervision: in training mode return every head, final first.
        prune_level: build only the nodes that head ``prune_level`` needs (None: all D).
        strides: per depth 1..D, the pooling factor of each spatial axis (1 or 2), e.g.
            ``[[2, 2, 1], [2, 2, 2], ...]`` for thick slices, as nnU-Net plans anisotropic
            pooling; None pools every axis by 2 at every depth (the paper).

    ``forward(x, prune_level=None, every_head=False)`` maps ``(B, C_in, *spatial)`` (float32,
    each spatial size divisible by the product of its strides up to ``level``, 2**level by
    default) to logits ``(B, C_out, *spatial)``; in training mode with deep supervision, or
    with ``every_head``, to a list ``[head_L, head_{L-1}, ..., head_1]``: head k of one
    level-L forward equals a level-k forward, since the nodes it needs are the same.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        features: Sequence[int] = (32, 64, 128, 256, 512),
        norm: str | tuple = "batch",
        act: str | tuple = ("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
        dropout: float = 0.0,
        deep_supervision: bool = True,
        prune_level: int | None = None,
        strides: Sequence[Sequence[int]] | None = None,
    ) -> None:
        super().__init__()
        depth = len(features) - 1
        if depth < 1:
            raise ValueError(f"features needs at least 2 entries, got {tuple(features)}")
        if strides is None:
            strides = [[2] * spatial_dims] * depth
        if len(strides) != depth or any(
            len(level) != spatial_dims or not set(level) <= {1, 2} for level in strides
        ):
            raise ValueError(
                f"strides needs {depth} entries of {spatial_dims} factors (1 or 2), got {strides}"
            )
        if prune_level is not None and not 1 <= prune_level <= depth:
            raise ValueError(f"prune_level must be in 1..{depth}, got {prune_level}")
        self.spatial_dims = spatial_dims
        self.depth = depth
        self.levels = prune_level or depth
        self.deep_supervision = deep_supervision
        self.concatenate = True
        self.features = tuple(features)
        self.strides = [tuple(int(factor) for factor in level) for level in strides]
        self.pools = nn.ModuleList(
            Pool["max", spatial_dims](kernel_size=level) for level in self.strides
        )

        def block(in_chns: int, out_chns: int) -> TwoConv:
            return TwoConv(spatial_dims, in_chns, out_chns, act, norm, bias=True, dropout=dropout)

        self.nodes = nn.ModuleDict()
        self.ups = nn.ModuleDict()
        for depth_index in range(self.levels + 1):
            source = in_channels if depth_index == 0 else features[depth_index - 1]
            self.nodes[_node_name(depth_index, 0)] = block(source, features[depth_index])
        for position in range(1, self.levels + 1):
            for depth_index in range(self.levels - position + 1):
                name = _node_name(depth_index, position)
                width = features[depth_index]
                self.ups[name] = UpSample(
                    spatial_dims,
                    features[depth_index + 1],
                    width,
                    scale_factor=self.strides[depth_index],
                    mode="deconv",
                )
                self.nodes[name] = block(width * (position + 1), width)
        self.heads = nn.ModuleList(
            Conv["conv", spatial_dims](features[0], out_channels, kernel_size=1)
            for _ in range(self.levels)
        )

    def forward(
        self, x: torch.Tensor, prune_level: int | None = None, every_head: bool = False
    ) -> torch.Tensor | list[torch.Tensor]:
        """Run the nodes with i + j <= level and return head ``level`` (see class doc)."""
        level = self.levels if prune_level is None else prune_level
        if not 1 <= level <= self.levels:
            raise ValueError(f"prune_level must be in 1..{self.levels}, got {prune_level}")
        divisor = self.divisor(level)
        spatial = tuple(x.shape[2:])
        if any(size % k for size, k in zip(spatial, divisor, strict=True)):
            shown = divisor[0] if len(set(divisor)) == 1 else divisor
            raise ValueError(
                f"UNet++ at level {level} needs each spatial size divisible by {shown}, "
                f"got {spatial}; pad the input (e.g. monai.transforms.DivisiblePad(k={shown}))"
            )
        outputs: dict[tuple[int, int], torch.Tensor] = {}
        for depth_index in range(level + 1):
            pool = self.pools[depth_index - 1] if depth_index else None
            source = x if pool is None else pool(outputs[(depth_index - 1, 0)])
            outputs[(depth_index, 0)] = self.nodes[_node_name(depth_index, 0)](source)
        for position in range(1, level + 1):
            for depth_index in range(level - position + 1):
                name = _node_name(depth_index, position)
                upsampled = self.ups[name](outputs[(depth_index + 1, position - 1)])
                inputs = [*(outputs[(depth_index, k)] for k in range(position)), upsampled]
                outputs[(depth_index, position)] = self.nodes[name](
                    torch.cat(inputs, dim=1) if self.concatenate else inputs
                )
        if every_head or (self.training and self.deep_supervision):
            return [self.heads[j - 1](outputs[(0, j)]) for j in range(level, 0, -1)]
        return self.heads[level - 1](outputs[(0, level)])

    def split_concatenations(self) -> None:
        """For an inference copy: each nested-skip node's first convolution becomes a
        ``SplitInputConvolution`` over X(i, 0..j-1) and the up-sampled X(i+1, j-1), and
        the forward passes it those tensors instead of their concatenation. Its
        ``state_dict`` keys change; the outputs do not (up to float rounding)."""
        for position in range(1, self.levels + 1):
            for depth_index in range(self.levels - position + 1):
                first = self.nodes[_node_name(depth_index, position)].conv_0
                widths = [self.features[depth_index]] * (position + 1)
                first.conv = SplitInputConvolution(first.conv, widths)
        self.concatenate = False

    def divisor(self, level: int | None = None) -> tuple[int, ...]:
        """Per spatial axis, what input sizes must divide by at ``level`` (default: all)."""
        factors = np.prod(self.strides[: level or self.levels], axis=0)
        return tuple(int(factor) for factor in factors)

    def input_divisor(self) -> tuple[int, ...]:
        """Per spatial axis, what every input size must divide by (all levels built)."""
        return self.divisor()

    def level_parameter_names(self, level: int) -> list[str]:
        """Names (``state_dict`` keys) of the parameters and buffers head ``level`` uses."""
        if not 1 <= level <= self.levels:
            raise ValueError(f"level must be in 1..{self.levels}, got {level}")
        prefixes = [f"nodes.{_node_name(i, 0)}." for i in range(level + 1)]
        for position in range(1, level + 1):
            for depth_index in range(level - position + 1):
                name = _node_name(depth_index, position)
                prefixes += [f"nodes.{name}.", f"ups.{name}."]
        prefixes += [f"heads.{j}." for j in range(level)]
        return [key for key in self.state_dict() if key.startswith(tuple(prefixes))]

    def level_parameter_count(self, level: int) -> int:
        """Number of trainable parameters the sub-network of head ``level`` uses.

        Counts the heads 1..level, since a pruned model keeps them for deep supervision.
        """
        names = set(self.level_parameter_names(level))
        return sum(p.numel() for key, p in self.named_parameters() if key in names)


@register_network(
    "unetpp",
    network=UNetPlusPlus,
    presets=PRESETS,
    abilities=Abilities(
        spatial_dims=(2, 3), prunable=True, deep_supervision=True, planned_pooling=True
    ),
)
def unetpp(
    *,
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    preset: str = "paper",
    **options: Any,
) -> UNetPlusPlus:
    """UNet++ (Zhou et al., TMI 2019) built from ``PRESETS[preset]``, options override."""
    arguments = preset_options(PRESETS, "unetpp", preset) | options
    return UNetPlusPlus(spatial_dims, in_channels, out_channels, **arguments)
