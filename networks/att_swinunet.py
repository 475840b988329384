"""Att-SwinU-Net (Aghdam et al., "Attention Swin U-Net: Cross-Contextual Attention Mechanism
for Skin Lesion Segmentation", ISBI 2023, arXiv 2210.16898), 2D.

Follows the paper's method section and overview figure: the Swin-Unet of Cao et al.
(patch size 4, embedding 96, depths 2-2-2-2, heads 3-6-12-24, window 7; a patch-merging
encoder, a patch-expanding decoder, a final 4x patch expanding and a 1x1 head), in which
each of the three skip connections is a cross-contextual attention module instead of plain
concatenation: a two-layer transformer (8 heads of 64 dimensions) in which decoder tokens
attend to the encoder's skip tokens and encoder tokens attend to the decoder's, after which
both streams are concatenated and linearly projected back to the decoder width.

Swin blocks, window attention, patch embedding and patch merging are MONAI's
(``monai.networks.nets.swin_unetr.BasicLayer``, ``PatchMerging``,
``monai.networks.blocks.PatchEmbed``), and so is the multi-head attention inside the
cross-contextual module (``CrossAttentionBlock``); patch expanding is written here.

Differences from the paper and its released code, and why:

- Every token of one stream attends to every token of the other. The released code wraps
  CrossViT's cross-attention, in which only a summary token (the mean of each stream)
  queries the other stream, and it overwrites the first patch token with that summary;
  the rest of the tokens pass through unchanged, so the attention barely reaches the
  output. The paper describes the two streams attending to each other; here they do
  (the tests change the attention weights and see the output change). The two streams
  are updated from the same inputs in each layer, with a pre-norm and a residual.
- The released code's "spatial attention" option has no effect on the output and is left
  out; so is its absolute position embedding (off in its configuration too).
- Any image size works: the input is zero-padded at the bottom and right to a multiple of
  ``patch_size * 2 ** (len(depths) - 1)`` (32) and the logits are cropped back. Token
  grids that the window does not tile (e.g. 64-32-16-8 for a 256 input and window 7) are
  padded inside each Swin block, as the official Swin segmentation backbone does; pass
  ``window_size=8`` to tile 256 and 512 inputs exactly. The released code builds its
  decoder for 224 x 224 whatever the input size.
- A single-channel image is not repeated to three channels; ``in_channels`` is used as
  given. The encoder starts from random weights unless ``train.init_from`` names a local
  file of ImageNet Swin-T weights (the paper's start; nothing is downloaded;
  ``pipelines/training/weight_layouts.py`` maps its names).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from monai.networks.blocks import CrossAttentionBlock, PatchEmbed
from monai.networks.layers import trunc_normal_
from monai.networks.nets.swin_unetr import BasicLayer, PatchMerging

from medseg.networks._registry import Abilities, preset_options, register_network

PRESETS: dict[str, dict[str, Any]] = {
    # The paper's Swin-T settings, cross-contextual attention of depth 2 with 8 heads of
    # 64 dimensions, 224 x 224 input.
    "paper": {
        "patch_size": 4,
        "embed_dim": 96,
        "depths": (2, 2, 2, 2),
        "num_heads": (3, 6, 12, 24),
        "window_size": 7,
        "drop_path_rate": 0.1,
        "cross_attention_depth": 2,
        "cross_attention_heads": 8,
        "cross_attention_head_dim": 64,
    },
    "small": {
        "patch_size": 4,
        "embed_dim": 48,
        "depths": (2, 2, 2, 2),
        "num_heads": (3, 6, 12, 24),
        "window_size": 7,
        "drop_path_rate": 0.1,
        "cross_attention_depth": 2,
        "cross_attention_heads": 4,
        "cross_attention_head_dim": 32,
    },
    # Window 4 tiles the 16-8-4-2 token grids of a 64 x 64 input exactly.
    "tiny": {
        "patch_size": 4,
        "embed_dim": 24,
        "depths": (2, 2, 2, 2),
        "num_heads": (1, 2, 4, 8),
        "window_size": 4,
        "drop_path_rate": 0.0,
        "cross_attention_depth": 2,
        "cross_attention_heads": 2,
        "cross_attention_head_dim": 8,
    },
}


def _channels_last(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a token-wise ``module`` to ``(B, C, H, W)``; returns ``(B, C', H, W)``."""
    return module(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class PatchExpand(nn.Module):
    """Swin-Unet's patch expanding: up-sample a token grid ``scale`` times.

    A linear layer makes ``scale**2 * out_dim`` channels per token, which are rearranged
    into a ``scale x scale`` block of tokens of ``out_dim`` channels, then layer-normed.
    ``forward`` maps ``(B, dim, H, W)`` to ``(B, out_dim, scale * H, scale * W)``.
    """

    def __init__(self, dim: int, out_dim: int, scale: int) -> None:
        super().__init__()
        self.scale = scale
        self.expand = nn.Linear(dim, scale * scale * out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, dim, H, W)`` -> ``(B, out_dim, scale * H, scale * W)``."""
        tokens = self.expand(x.permute(0, 2, 3, 1))
        tokens = rearrange(tokens, "b h w (p q c) -> b (h p) (w q) c", p=self.scale, q=self.scale)
        return self.norm(tokens).permute(0, 3, 1, 2)


class MutualAttention(nn.Module):
    """One cross-contextual layer: each stream attends to the other (pre-norm, residual).

    ``forward(decoder, encoder)`` takes two token sequences ``(B, N, dim)`` and
    ``(B, M, dim)`` and returns both updated, same shapes.
    """

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.decoder_norm = nn.LayerNorm(dim)
        self.encoder_norm = nn.LayerNorm(dim)
        self.decoder_attends = CrossAttentionBlock(
            dim, heads, dim_head=head_dim, use_flash_attention=True
        )
        self.encoder_attends = CrossAttentionBlock(
            dim, heads, dim_head=head_dim, use_flash_attention=True
        )

    def forward(
        self, decoder: torch.Tensor, encoder: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both streams after one exchange: ``(B, N, dim)``, ``(B, M, dim)``."""
        decoder_normed = self.decoder_norm(decoder)
        encoder_normed = self.encoder_norm(encoder)
        return (
            decoder + self.decoder_attends(decoder_normed, context=encoder_normed),
            encoder + self.encoder_attends(encoder_normed, context=decoder_normed),
        )


class CrossContextualAttention(nn.Module):
    """The Att-SwinU-Net skip connection: mutual attention, concatenation, projection.

    ``forward(decoder, encoder)`` takes the decoder and encoder feature maps, both
    ``(B, dim, H, W)``, and returns the fused map ``(B, dim, H, W)``.
    """

    def __init__(self, dim: int, depth: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(MutualAttention(dim, heads, head_dim) for _ in range(depth))
        self.project = nn.Linear(2 * dim, dim)

    def forward(self, decoder: torch.Tensor, encoder: torch.Tensor) -> torch.Tensor:
        """Fused feature map ``(B, dim, H, W)``."""
        batch, dim, height, width = decoder.shape
        decoder_tokens = decoder.flatten(2).transpose(1, 2)
        encoder_tokens = encoder.flatten(2).transpose(1, 2)
        for layer in self.layers:
            decoder_tokens, encoder_tokens = layer(decoder_tokens, encoder_tokens)
        fused = self.project(torch.cat([decoder_tokens, encoder_tokens], dim=-1))
        return fused.transpose(1, 2).reshape(batch, dim, height, width)


class AttSwinUNet(nn.Module):
    """Swin-Unet whose skip connections are cross-contextual attention modules.

    Args:
        in_channels: input channels C_in.
        out_channels: output channels C_out.
        patch_size: side of the patches embedded as tokens (4).
        embed_dim: token width of the first stage; stage i has ``embed_dim * 2**i``.
        depths: Swin blocks per stage (encoder stage i and decoder stage i alike).
        num_heads: attention heads per stage.
        window_size: side of the attention windows.
        mlp_ratio: width of the Swin blocks' MLP relative to the tokens.
        drop_path_rate: stochastic depth, rising linearly over the encoder blocks.
        cross_attention_depth, cross_attention_heads, cross_attention_head_dim: the
            transformer of each skip connection.

    ``forward(x)`` maps ``(B, C_in, H, W)`` float32 of any size to logits
    ``(B, C_out, H, W)``; it pads to a multiple of ``self.divisor`` and crops back.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        patch_size: int = 4,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.1,
        cross_attention_depth: int = 2,
        cross_attention_heads: int = 8,
        cross_attention_head_dim: int = 64,
    ) -> None:
        super().__init__()
        stages = len(depths)
        if stages < 2 or len(num_heads) != stages:
            raise ValueError(
                f"depths and num_heads need the same length of at least 2, got {tuple(depths)} "
                f"and {tuple(num_heads)}"
            )
        self.divisor = patch_size * 2 ** (stages - 1)
        widths = [embed_dim * 2**stage for stage in range(stages)]
        blocks = sum(depths)
        # Plain floats (not torch.linspace) so the network also builds on the meta device.
        rates = [drop_path_rate * block / max(blocks - 1, 1) for block in range(blocks)]

        def swin_stage(stage: int, downsample: type[nn.Module] | None) -> BasicLayer:
            first = sum(depths[:stage])
            return BasicLayer(
                dim=widths[stage],
                depth=depths[stage],
                num_heads=num_heads[stage],
                window_size=(window_size, window_size),
                drop_path=rates[first : first + depths[stage]],
                mlp_ratio=mlp_ratio,
                qkv_bias=True,
                downsample=downsample,
            )

        self.patch_embed = PatchEmbed(patch_size, in_channels, embed_dim, spatial_dims=2)
        self.encoder = nn.ModuleList(
            swin_stage(stage, PatchMerging if stage < stages - 1 else None)
            for stage in range(stages)
        )
        self.bottleneck_norm = nn.LayerNorm(widths[-1])
        self.bottleneck_expand = PatchExpand(widths[-1], widths[-2], 2)
        skip_stages = list(reversed(range(stages - 1)))
        self.skip_fusions = nn.ModuleList(
            CrossContextualAttention(
                widths[stage],
                cross_attention_depth,
                cross_attention_heads,
                cross_attention_head_dim,
            )
            for stage in skip_stages
        )
        self.decoder = nn.ModuleList(swin_stage(stage, None) for stage in skip_stages)
        self.decoder_expands = nn.ModuleList(
            PatchExpand(widths[stage], widths[stage - 1], 2) for stage in skip_stages[:-1]
        )
        self.decoder_norm = nn.LayerNorm(embed_dim)
        self.final_expand = PatchExpand(embed_dim, embed_dim, patch_size)
        self.head = nn.Conv2d(embed_dim, out_channels, kernel_size=1)
        self.apply(_init_weights)

    def input_divisor(self) -> tuple[int, ...]:
        """Per axis, what input sizes divide by to need no padding (``divisor``)."""
        return (self.divisor, self.divisor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, C_out, H, W)`` for ``x`` of shape ``(B, C_in, H, W)``."""
        if x.ndim != 4:
            raise ValueError(
                f"Att-SwinU-Net is 2D and takes (B, C, H, W), got shape {tuple(x.shape)}"
            )
        height, width = x.shape[2:]
        x = F.pad(x, (0, -width % self.divisor, 0, -height % self.divisor))
        tokens = self.patch_embed(x)
        skips = []
        for stage in self.encoder[:-1]:
            skips.append(tokens)
            tokens = stage(tokens)
        tokens = _channels_last(self.bottleneck_norm, self.encoder[-1](tokens))
        tokens = self.bottleneck_expand(tokens)
        for index, (fusion, stage) in enumerate(zip(self.skip_fusions, self.decoder, strict=True)):
            tokens = stage(fusion(tokens, skips[-1 - index]))
            if index < len(self.decoder_expands):
                tokens = self.decoder_expands[index](tokens)
        tokens = self.final_expand(_channels_last(self.decoder_norm, tokens))
        return self.head(tokens)[:, :, :height, :width]


def _init_weights(module: nn.Module) -> None:
    # Swin's initialisation: truncated-normal linear weights, zero biases, unit layer norms.
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


@register_network(
    "att_swinunet", network=AttSwinUNet, presets=PRESETS, abilities=Abilities(spatial_dims=(2,))
)
def att_swinunet(
    *,
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    preset: str = "paper",
    **options: Any,
) -> AttSwinUNet:
    """Att-SwinU-Net (Aghdam et al., ISBI 2023) built from ``PRESETS[preset]``, options override."""
    arguments = preset_options(PRESETS, "att_swinunet", preset) | options
    return AttSwinUNet(in_channels, out_channels, **arguments)
