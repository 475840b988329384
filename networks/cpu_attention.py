"""Swin stages for inference without the full-size attention bias of shifted windows.

MONAI's Swin blocks (``monai.networks.nets.swin_unetr.BasicLayer``, used by Swin UNETR and
Att-SwinU-Net) give PyTorch's fused attention one additive bias per window: the relative
position bias plus the shifted-window mask, expanded to ``(windows, heads, n, n)``. For
Swin UNETR small on two 64^3 windows that tensor is 353 MB per block, and building it took
about as long as the attention itself. Yet the mask of a window depends only on whether it
is the last window along each shifted axis, so there are at most ``2**spatial_dims``
distinct masks. ``InferenceSwinStage`` orders the windows by that pattern and runs one
attention call per pattern with a ``(1, heads, n, n)`` bias that broadcasts. The order is
built once per input size as one index that also does the padding, the cyclic shift and the
window partition (one copy instead of three), and one index back that reverses, shifts back
and crops.

Written here because MONAI's block builds the expanded bias inside its forward and offers
no hook to pass a broadcasting one; the blocks' own submodules and weights are reused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from itertools import product

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.nets.swin_unetr import BasicLayer, SwinTransformerBlock, get_window_size

from medseg.networks.module_swap import swap_modules

# MONAI's value for token pairs of different shifted regions (added before the softmax)
MASKED = -100.0


@dataclass(frozen=True)
class WindowLayout:
    """Where each token of one input size goes in the windows of one Swin block.

    ``gather``: ``(windows * batch * n,)`` rows of the tokens ``(batch * (tokens + 1), C)``
    (the extra row per sample is zeros, the padding) in window order; ``scatter``:
    ``(batch * tokens,)`` the window row of each token, for the way back; ``groups``: per
    run of windows that share a mask, ``(first row, end row, mask (n, n) or None)``.
    """

    gather: torch.Tensor
    scatter: torch.Tensor
    groups: tuple[tuple[int, int, torch.Tensor | None], ...]


@lru_cache(maxsize=32)
def window_layout(
    batch: int, spatial: tuple[int, ...], window: tuple[int, ...], shift: tuple[int, ...]
) -> WindowLayout:
    """The ``WindowLayout`` of ``batch`` samples of ``spatial`` tokens, windows of ``window``
    tokens and a cyclic shift of ``shift`` (MONAI's ``get_window_size`` already applied)."""
    padded = [-(-size // side) * side for size, side in zip(spatial, window, strict=True)]
    grid = [size // side for size, side in zip(padded, window, strict=True)]
    tokens, per_window = math.prod(spatial), math.prod(window)

    # a window's mask depends only on whether it is the last one along each shifted axis
    def pattern(cell: tuple[int, ...]) -> tuple[bool, ...]:
        return tuple(c == g - 1 and s > 0 for c, g, s in zip(cell, grid, shift, strict=True))

    cells = sorted(product(*map(range, grid)), key=pattern)
    offsets = torch.stack(
        torch.meshgrid(*(torch.arange(side) for side in window), indexing="ij")
    ).flatten(1)  # (dims, n): each window position
    corners = torch.tensor(cells).T[:, :, None] * torch.tensor(window)[:, None, None]
    # the token shown at a shifted, padded position p is the one at (p + shift) mod padded
    shifted = corners + offsets[:, None, :] + torch.tensor(shift)[:, None, None]
    source = shifted % torch.tensor(padded)[:, None, None]  # (dims, windows, n)
    inside = (source < torch.tensor(spatial)[:, None, None]).all(0)
    strides = torch.tensor([math.prod(spatial[axis + 1 :]) for axis in range(len(spatial))])
    flat = torch.where(inside, (source * strides[:, None, None]).sum(0), tokens)
    samples = torch.arange(batch)[None, :, None] * (tokens + 1)
    gather = (flat[:, None, :] + samples).flatten()  # (windows, batch, n)
    scatter = torch.empty(batch * (tokens + 1), dtype=torch.long)
    scatter[gather] = torch.arange(gather.numel())
    scatter = scatter.view(batch, tokens + 1)[:, :tokens].flatten()
    keys = [pattern(cell) for cell in cells]
    starts = [index for index, key in enumerate(keys) if index == 0 or keys[index - 1] != key]
    rows = batch * per_window
    groups = tuple(
        (start * rows, end * rows, _mask(keys[start], window, shift))
        for start, end in zip(starts, [*starts[1:], len(cells)], strict=True)
    )
    return WindowLayout(gather, scatter, groups)


def _mask(
    last: tuple[bool, ...], window: tuple[int, ...], shift: tuple[int, ...]
) -> torch.Tensor | None:
    """The additive mask ``(n, n)`` of a window that is the last one along the axes in
    ``last``: tokens that wrapped around from the far side (the last ``shift`` positions)
    and those that did not may not attend to each other. ``None`` where nothing is masked."""
    if not any(last):
        return None
    positions = torch.meshgrid(*(torch.arange(side) for side in window), indexing="ij")
    region = torch.zeros(math.prod(window), dtype=torch.long)
    for axis, is_last in enumerate(last):
        if is_last:
            wrapped = (positions[axis] >= window[axis] - shift[axis]).flatten().long()
            region = region * 2 + wrapped
    different = region[:, None] != region[None, :]
    return torch.zeros(different.shape).masked_fill_(different, MASKED)


def window_attention(
    block: SwinTransformerBlock, x: torch.Tensor, window: tuple[int, ...], shift: tuple[int, ...]
) -> torch.Tensor:
    """The attention half of MONAI's Swin ``block`` (norm, windows, attention, back), without
    the residual: ``x`` ``(B, *spatial, C)`` in, the same shape out."""
    batch, *spatial, channels = x.shape
    layout = window_layout(batch, tuple(spatial), window, shift)
    normed = block.norm1(x).reshape(batch, -1, channels)
    padded = torch.cat([normed, normed.new_zeros(batch, 1, channels)], 1).view(-1, channels)
    windows = padded.index_select(0, layout.gather.to(padded.device))
    attention = block.attn
    heads, size = attention.num_heads, math.prod(window)
    qkv = attention.qkv(windows)
    index = attention.relative_position_index[:size, :size].reshape(-1)
    bias = attention.relative_position_bias_table[index].view(size, size, heads).permute(2, 0, 1)
    bias = bias.to(qkv.dtype)
    mixed = torch.empty_like(windows, dtype=qkv.dtype)
    for start, end, mask in layout.groups:
        q, k, v = qkv[start:end].view(-1, size, 3, heads, channels // heads).permute(2, 0, 3, 1, 4)
        group_bias = bias if mask is None else bias + mask.to(bias)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=group_bias.unsqueeze(0), scale=attention.scale
        )
        mixed[start:end].view(-1, size, heads, channels // heads).copy_(out.transpose(1, 2))
    projected = attention.proj(mixed)
    return projected.index_select(0, layout.scatter.to(padded.device)).view(x.shape)


class InferenceSwinStage(nn.Module):
    """MONAI's ``BasicLayer`` (a stage of Swin blocks and its patch merging) for inference,
    computing the same outputs with one attention call per mask pattern.

    Holds the stage's own ``blocks`` and ``downsample`` (same weights, same state-dict keys).
    ``forward(x)`` maps ``(B, C, *spatial)`` (2D or 3D) to what the stage returns:
    ``(B, C', *spatial')``, halved and widened where the stage merges patches.
    """

    def __init__(self, stage: BasicLayer) -> None:
        super().__init__()
        self.blocks = stage.blocks
        self.downsample = stage.downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The stage's output for ``x`` of shape ``(B, C, *spatial)``."""
        tokens = x.movedim(1, -1)
        spatial = tuple(x.shape[2:])
        for block in self.blocks:
            window, shift = get_window_size(spatial, block.window_size, block.shift_size)
            tokens = tokens + block.drop_path(window_attention(block, tokens, window, shift))
            tokens = tokens + block.forward_part2(tokens)
        if self.downsample is not None:
            tokens = self.downsample(tokens)
        return tokens.movedim(-1, 1)


def with_inference_swin_stages(network: nn.Module) -> nn.Module:
    """``network`` with every Swin stage of MONAI's (``BasicLayer`` of ``SwinTransformerBlock``)
    replaced in place by an ``InferenceSwinStage`` over the same blocks; returns ``network``.
    Stages of other blocks (MONAI's Hyena option) are left as they are."""

    def replacement(child: nn.Module) -> nn.Module | None:
        swin = isinstance(child, BasicLayer) and all(
            isinstance(block, SwinTransformerBlock) for block in child.blocks
        )
        return InferenceSwinStage(child) if swin else None

    return swap_modules(network, replacement)
