"""H-DenseUNet (Li et al., "H-DenseUNet: Hybrid Densely Connected UNet for Liver and Tumor
Segmentation from CT Volumes", IEEE TMI 2018, arXiv 1709.07330), in PyTorch.

Follows the method section of the paper (its overview figure and architecture table):

- **2D DenseUNet**: a DenseNet-161 encoder (7x7/2 stem of 96 filters,
  3x3/2 max-pool, dense blocks of 6-12-36-24 layers, growth 48, transitions compressing
  by 0.5) and a decoder of five 2x up-sampling stages, each summed with the encoder feature
  of the same scale (1x1 projection where the channels differ), then a 3x3 convolution
  (768, 384, 96, 96, 64 filters), batch norm and ReLU, with dropout 0.3 before the last
  norm. Its input is three adjacent slices as channels (2.5D).
- **3D DenseUNet**: the same layout in 3D with dense blocks 3-4-12-8,
  growth 32, 96 initial filters and 2x2x1 pooling, on the volume concatenated with the 2D
  class scores re-stacked into a volume (auto-context).
- **Hybrid feature fusion**: the re-stacked 2D decoder features plus the
  3D decoder features, a 3x3x3 convolution of 64 channels, dropout 0.3, batch norm, ReLU and
  the 1x1x1 class head. Everything is one differentiable graph.

The network takes ``(B, C, X, Y, Z)`` with ``Z = slices`` and builds the 2.5D inputs itself
(edge slices repeated, as in the reference). ``mode="2d"`` runs only the 2D DenseUNet and
``freeze_2d`` freezes it, for the paper's staged training (2D first, then the 3D part with
the 2D part frozen, then end to end). Dense blocks and transitions are MONAI's.

Differences from the paper and the released Keras code, and why:

- z is never down-sampled: the 3D stem and max-pool stride 2x2x1 like the transitions'
  2x2x1 pooling. The Keras code strides z by 2 in its 7x7x7 stem and 3x3x3 max-pool (and
  up-samples z in its last two decoder stages), which ties the slice count to multiples
  of 4; here any ``slices`` works and the 3D part keeps the full z resolution, at about
  4x the memory of the Keras 3D stem on the same patch.
- The 3D decoder sums its skips like the 2D one. The Keras code has them commented out
  (its decoder widths 504-224-192-96 could not be summed with its skips); the paper names
  the 3D part a DenseUNet, and the 1x1 projections make the sums possible.
- The 3D part has no class head of its own: the Keras model builds one and never uses it,
  which leaves parameters without gradient.
- Up-sampling is nearest-neighbour, as the Keras ``UpSampling`` layers are.
- The 2D class scores enter the 3D part multiplied by ``score_scale`` (1 by default). The
  Keras code multiplies them by 250 to match its unnormalised Hounsfield input; medseg's
  transforms normalise intensities, so scores and image are already of similar scale.
- ``residual_scores`` (off by default, and in the paper recipe) adds the 2D class scores to
  the fused head's output and starts that head's last convolution at zero, so the hybrid
  stages begin from the 2D stage's segmentation instead of from a random head.
- The 2D encoder starts from random weights unless ``train.init_from`` names a local
  file of torchvision's ImageNet DenseNet-161 (the paper's start; nothing is downloaded;
  ``pipelines/training/weight_layouts.py`` maps its names).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
from monai.networks.layers.factories import Conv, Pool
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from monai.networks.nets.densenet import _DenseBlock, _Transition

from medseg.networks._registry import Abilities, preset_options, register_network

PRESETS: dict[str, dict[str, Any]] = {
    # The paper's 2D DenseUNet-167 and 3D DenseUNet-65; its input is 224 x 224 x 12.
    "paper": {
        "slices": 12,
        "init_features_2d": 96,
        "growth_rate_2d": 48,
        "block_layers_2d": (6, 12, 36, 24),
        "decoder_features_2d": (768, 384, 96, 96, 64),
        "init_features_3d": 96,
        "growth_rate_3d": 32,
        "block_layers_3d": (3, 4, 12, 8),
        "decoder_features_3d": (504, 224, 192, 96, 64),
        "fusion_features": 64,
    },
    "small": {
        "slices": 12,
        "init_features_2d": 32,
        "growth_rate_2d": 16,
        "block_layers_2d": (2, 4, 12, 8),
        "decoder_features_2d": (96, 64, 32, 32, 32),
        "init_features_3d": 32,
        "growth_rate_3d": 16,
        "block_layers_3d": (1, 2, 4, 3),
        "decoder_features_3d": (96, 56, 48, 32, 32),
        "fusion_features": 32,
    },
    "tiny": {
        "slices": 8,
        "init_features_2d": 8,
        "growth_rate_2d": 4,
        "block_layers_2d": (1, 1, 1, 1),
        "decoder_features_2d": (16, 8, 8, 8, 8),
        "init_features_3d": 8,
        "growth_rate_3d": 4,
        "block_layers_3d": (1, 1, 1, 1),
        "decoder_features_3d": (16, 8, 8, 8, 8),
        "fusion_features": 8,
    },
}

_MODES = ("2d", "hybrid")
_RELU = ("relu", {"inplace": True})


class DenseUNet(nn.Module):
    """DenseNet encoder and a decoder that sums same-scale encoder features (2D or 3D).

    Args:
        spatial_dims: 2 or 3; in 3D the last axis (z) is never down-sampled.
        in_channels: input channels.
        init_features: filters of the 7x7 stem.
        growth_rate: filters each dense layer adds.
        block_layers: layers per dense block; ``n`` blocks down-sample x and y by
            ``2 ** (n + 1)``.
        decoder_features: filters of the ``n + 1`` decoder stages, deepest first.
        dropout: dropout rate before the norm of the last decoder stage.
        norm: MONAI norm name or (name, args).

    ``forward(x)`` maps ``(B, in_channels, X, Y[, Z])`` (X and Y divisible by
    ``self.divisor``) to decoder features ``(B, decoder_features[-1], X, Y[, Z])``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        init_features: int,
        growth_rate: int,
        block_layers: Sequence[int],
        decoder_features: Sequence[int],
        dropout: float = 0.3,
        norm: str | tuple = "batch",
    ) -> None:
        super().__init__()
        if len(decoder_features) != len(block_layers) + 1:
            raise ValueError(
                f"decoder_features needs {len(block_layers) + 1} entries (one per dense block "
                f"plus the stem), got {tuple(decoder_features)}"
            )
        conv = Conv["conv", spatial_dims]
        down = (2, 2) if spatial_dims == 2 else (2, 2, 1)
        self.divisor = 2 ** (len(block_layers) + 1)

        def norm_act(channels: int) -> list[nn.Module]:
            return [get_norm_layer(norm, spatial_dims, channels), get_act_layer(_RELU)]

        self.stem = nn.Sequential(
            conv(in_channels, init_features, kernel_size=7, stride=down, padding=3, bias=False),
            *norm_act(init_features),
        )
        self.stem_pool = Pool["max", spatial_dims](kernel_size=3, stride=down, padding=1)
        self.blocks = nn.ModuleList()
        self.transitions = nn.ModuleList()
        skip_channels = [init_features]
        channels = init_features
        for index, layers in enumerate(block_layers):
            self.blocks.append(
                _DenseBlock(
                    spatial_dims,
                    layers,
                    channels,
                    bn_size=4,
                    growth_rate=growth_rate,
                    dropout_prob=0.0,
                    act=_RELU,
                    norm=norm,
                )
            )
            channels += layers * growth_rate
            if index < len(block_layers) - 1:
                skip_channels.append(channels)
                transition = _Transition(
                    spatial_dims, channels, channels // 2, act=_RELU, norm=norm
                )
                # MONAI's transition pools 2x on every axis; z must keep its resolution.
                transition.pool = Pool["avg", spatial_dims](kernel_size=down, stride=down)
                self.transitions.append(transition)
                channels //= 2
        self.bottleneck_norm = nn.Sequential(*norm_act(channels))

        self.upsample = nn.Upsample(scale_factor=down, mode="nearest")
        # Skip k is summed with the up-sampled output of decoder stage k - 1 (the
        # bottleneck for k = 0), so it is projected to that width where they differ.
        sum_widths = [channels, *decoder_features[:-1]]
        self.projections = nn.ModuleList(
            nn.Identity() if skip == width else conv(skip, width, kernel_size=1)
            for skip, width in zip(reversed(skip_channels), sum_widths[:-1], strict=True)
        )
        self.decoder = nn.ModuleList(
            nn.Sequential(
                conv(source, width, kernel_size=3, padding=1),
                nn.Dropout(dropout) if index == len(decoder_features) - 1 else nn.Identity(),
                *norm_act(width),
            )
            for index, (source, width) in enumerate(zip(sum_widths, decoder_features, strict=True))
        )
        self.out_channels = decoder_features[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder features ``(B, decoder_features[-1], *spatial)`` (see class doc)."""
        x = self.stem(x)
        skips = [x]
        x = self.stem_pool(x)
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index < len(self.transitions):
                skips.append(x)
                x = self.transitions[index](x)
        x = self.bottleneck_norm(x)
        for index, stage in enumerate(self.decoder):
            x = self.upsample(x)
            if index < len(self.projections):
                x = x + self.projections[index](skips[-1 - index])
            x = stage(x)
        return x


class HDenseUNet(nn.Module):
    """H-DenseUNet: 2.5D DenseUNet, auto-context 3D DenseUNet and hybrid feature fusion.

    Args:
        in_channels: image channels C (each becomes 3 adjacent-slice channels in 2D).
        out_channels: classes C_out of the 2D head and of the fused head.
        slices: Z, the number of consecutive slices the network takes (12 in the paper).
        init_features_2d, growth_rate_2d, block_layers_2d, decoder_features_2d: the 2D
            DenseUNet (see ``DenseUNet``).
        init_features_3d, growth_rate_3d, block_layers_3d, decoder_features_3d: the 3D
            DenseUNet; its last decoder width must equal the 2D one (the two are summed).
        fusion_features: channels of the fusion convolution.
        dropout: dropout rate of the last decoder stages and of the fusion layer.
        score_scale: factor on the 2D class scores fed to the 3D part.
        residual_scores: add the 2D class scores to the fused head's output, whose last
            convolution then starts at zero, so a hybrid stage begins where the 2D stage
            ended (not in the paper; off by default).
        norm: MONAI norm name or (name, args) for every norm layer.
        mode: ``"hybrid"`` (the whole network) or ``"2d"`` (the 2D DenseUNet only).

    ``forward(x)`` maps ``(B, C, X, Y, slices)`` float32 (X, Y divisible by
    ``self.divisor``, 32 in every preset) to logits ``(B, C_out, X, Y, slices)``: the fused
    head in hybrid mode, the 2D head's per-slice scores stacked along z in 2D mode.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        slices: int = 12,
        init_features_2d: int = 96,
        growth_rate_2d: int = 48,
        block_layers_2d: Sequence[int] = (6, 12, 36, 24),
        decoder_features_2d: Sequence[int] = (768, 384, 96, 96, 64),
        init_features_3d: int = 96,
        growth_rate_3d: int = 32,
        block_layers_3d: Sequence[int] = (3, 4, 12, 8),
        decoder_features_3d: Sequence[int] = (504, 224, 192, 96, 64),
        fusion_features: int = 64,
        dropout: float = 0.3,
        score_scale: float = 1.0,
        residual_scores: bool = False,
        norm: str | tuple = "batch",
        mode: str = "hybrid",
    ) -> None:
        super().__init__()
        if decoder_features_2d[-1] != decoder_features_3d[-1]:
            raise ValueError(
                "the last 2D and 3D decoder widths are summed and must be equal, got "
                f"{decoder_features_2d[-1]} and {decoder_features_3d[-1]}"
            )
        if slices < 1:
            raise ValueError(f"slices must be at least 1, got {slices}")
        self.slices = slices
        self.score_scale = score_scale
        self.residual_scores = residual_scores
        self.mode = mode
        self.frozen_2d = False
        self.dense_2d = DenseUNet(
            2,
            in_channels * 3,
            init_features_2d,
            growth_rate_2d,
            block_layers_2d,
            decoder_features_2d,
            dropout,
            norm,
        )
        self.head_2d = nn.Conv2d(self.dense_2d.out_channels, out_channels, kernel_size=1)
        self.dense_3d = DenseUNet(
            3,
            in_channels + out_channels,
            init_features_3d,
            growth_rate_3d,
            block_layers_3d,
            decoder_features_3d,
            dropout,
            norm,
        )
        self.fusion = nn.Sequential(
            nn.Conv3d(self.dense_3d.out_channels, fusion_features, kernel_size=3, padding=1),
            nn.Dropout(dropout),
            get_norm_layer(norm, 3, fusion_features),
            get_act_layer(_RELU),
            nn.Conv3d(fusion_features, out_channels, kernel_size=1),
        )
        if residual_scores:
            nn.init.zeros_(self.fusion[-1].weight)
            nn.init.zeros_(self.fusion[-1].bias)
        self.divisor = max(self.dense_2d.divisor, self.dense_3d.divisor)

    def input_divisor(self) -> tuple[int, ...]:
        """X and Y divide by ``divisor``; Z is ``slices`` (see ``Abilities.fixed_depth``)."""
        return (self.divisor, self.divisor, 1)

    @property
    def mode(self) -> str:
        """``"hybrid"`` or ``"2d"``; settable between training stages."""
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        self._mode = mode

    def freeze_2d(self, frozen: bool = True) -> None:
        """Stop (or restart) training the 2D DenseUNet and its head.

        A frozen 2D part gets no gradient and stays in eval mode (batch-norm statistics
        fixed, no dropout) whatever ``train()`` is called with.
        """
        self.frozen_2d = frozen
        for parameter in [*self.dense_2d.parameters(), *self.head_2d.parameters()]:
            parameter.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> HDenseUNet:
        """Set training mode, keeping a frozen 2D part in eval mode; returns ``self``."""
        super().train(mode)
        if self.frozen_2d:
            self.dense_2d.eval()
            self.head_2d.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, C_out, X, Y, slices)`` for ``x`` of shape ``(B, C, X, Y, slices)``."""
        self._check_input(x)
        batch = x.shape[0]
        features_2d = self.dense_2d(_adjacent_slices(x))
        scores = _restack(self.head_2d(features_2d), batch)
        if self.mode == "2d":
            return scores
        features_3d = self.dense_3d(torch.cat([x, scores * self.score_scale], dim=1))
        fused = self.fusion(features_3d + _restack(features_2d, batch))
        return fused + scores if self.residual_scores else fused

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 5:
            raise ValueError(
                f"H-DenseUNet takes volumes (B, C, X, Y, Z), got shape {tuple(x.shape)}"
            )
        size_x, size_y, size_z = x.shape[2:]
        if size_z != self.slices:
            raise ValueError(
                f"H-DenseUNet was built for {self.slices} slices, got Z={size_z}; feed "
                f"patches of depth {self.slices} (e.g. sliding-window roi (X, Y, {self.slices}))"
            )
        if size_x % self.divisor or size_y % self.divisor:
            raise ValueError(
                f"H-DenseUNet needs X and Y divisible by {self.divisor}, got ({size_x}, "
                f"{size_y}); pad the input (e.g. monai.transforms.DivisiblePad("
                f"k=({self.divisor}, {self.divisor}, 1)))"
            )


def _adjacent_slices(volume: torch.Tensor) -> torch.Tensor:
    """``(B, C, X, Y, Z)`` -> ``(B * Z, C * 3, X, Y)``: slice z with z - 1 and z + 1.

    The first and last slices are repeated at the edges. Channels are ordered
    ``[c0 z-1, c0 z, c0 z+1, c1 z-1, ...]``.
    """
    batch, channels, size_x, size_y, size_z = volume.shape
    padded = torch.cat([volume[..., :1], volume, volume[..., -1:]], dim=-1)
    windows = padded.unfold(-1, 3, 1)
    return windows.permute(0, 4, 1, 5, 2, 3).reshape(batch * size_z, channels * 3, size_x, size_y)


def _restack(slices: torch.Tensor, batch: int) -> torch.Tensor:
    """``(B * Z, F, X, Y)`` -> ``(B, F, X, Y, Z)``, the inverse of the slicing order."""
    _, features, size_x, size_y = slices.shape
    return slices.reshape(batch, -1, features, size_x, size_y).permute(0, 2, 3, 4, 1)


@register_network(
    "hdenseunet",
    network=HDenseUNet,
    presets=PRESETS,
    abilities=Abilities(spatial_dims=(3,), modes=_MODES, fixed_depth="slices"),
)
def hdenseunet(
    *,
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    preset: str = "paper",
    **options: Any,
) -> HDenseUNet:
    """H-DenseUNet (Li et al., TMI 2018) built from ``PRESETS[preset]``, options override."""
    arguments = preset_options(PRESETS, "hdenseunet", preset) | options
    return HDenseUNet(in_channels, out_channels, **arguments)
