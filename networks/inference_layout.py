"""A copy of a trained network laid out channels-last (NHWC, NDHWC) for inference on the CPU.

oneDNN's 3D convolutions of few channels run 2-2.7x faster on NDHWC tensors than on NCDHW
ones (a tiny UNet++ forward takes 0.6x the time), but PyTorch's instance norm reshapes its
input to ``(1, B*C, ...)``, which in that layout costs two full copies per norm and gives
back most of the gain. ``ChannelsLastInstanceNorm`` computes the same normalisation in that
layout. The same holds in 2D: a tiny 2D UNet++ forward takes 0.53x the time, H-DenseUNet's
2D part about 0.85x. Written here because neither PyTorch nor MONAI offers a
layout-preserving instance norm.

The copy also avoids passes over the activations that inference does not need: batch
norms after a convolution are folded into it (PyTorch's ``fuse_conv_bn_eval``), and a
network that declares it (``SplitsConcatenations``, UNet++) convolves its concatenated
skips piece by piece instead of copying them together (``SplitInputConvolution``).
Together with the instance norm's statistics from PyTorch's batch-norm kernel, a UNet++
small 3D forward takes about 0.84x the time of the previous copy (benchmarks/README.md,
section 15).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm
from torch.nn.utils.fusion import fuse_conv_bn_eval

from medseg.networks.cpu_attention import with_inference_swin_stages
from medseg.networks.module_swap import swap_modules
from medseg.networks.pointwise_conv import with_pointwise_convs

# Columns of the matrix each sample's statistics are summed over: wide enough that a few
# channels fill the vector lanes and each float32 column sum adds few rows, narrow enough
# that the per-column sums stay in the L1 cache (measured: 256 columns loses precision,
# 4096 is slower on 8-32 channels).
STATISTICS_COLUMNS = 1024
CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


def is_channels_last(x: torch.Tensor) -> bool:
    """Whether a 4D or 5D tensor is laid out NHWC or NDHWC (False for other ranks)."""
    return x.ndim in CHANNELS_LAST and x.is_contiguous(memory_format=CHANNELS_LAST[x.ndim])


class ChannelsLastInstanceNorm(nn.Module):
    """Instance norm for channels-last inputs: ``(B, C, *spatial)`` in, the same shape, dtype
    and memory layout out, normalised per sample and channel over the spatial axes (biased
    variance, as ``nn.InstanceNorm2d`` and ``nn.InstanceNorm3d``). Takes ``eps``, ``weight``
    and ``bias`` from ``source``, an instance norm without running statistics.

    Each sample's voxels are read as a matrix of ``rows`` x ``lanes * C`` (neighbouring
    voxels side by side, so that few channels still fill the vector lanes and each column
    sums few rows in float32), whose column means and variances PyTorch's channels-last
    batch-norm statistics give in two passes; they are merged per channel in float64 and
    applied in one ``addcmul``. Outputs agree with PyTorch's instance norm to about 1e-6
    (6e-6 where a channel's mean is 20 times its spread). A constant channel gives
    exactly ``bias`` (zero without affine), where PyTorch leaves a rounding residue that
    the next norm would blow up (1e-2 for a channel of -1234.567).
    """

    def __init__(self, source: _InstanceNorm) -> None:
        super().__init__()
        self.eps = source.eps
        self.weight = source.weight
        self.bias = source.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` normalised per sample and channel."""
        voxels = x[0, 0].numel()
        if voxels == 1 or not is_channels_last(x):
            # PyTorch's own norm, which also refuses a single voxel as the original did
            return F.instance_norm(x, weight=self.weight, bias=self.bias, eps=self.eps)
        batch, channels = x.shape[:2]
        lanes = 1
        while lanes * channels < STATISTICS_COLUMNS and voxels % (2 * lanes) == 0:
            lanes *= 2
        rows = x.movedim(1, -1).reshape(batch, voxels // lanes, lanes * channels)
        column_mean, column_variance = zip(
            *(
                torch.batch_norm_update_stats(sample.t()[None, :, :, None], None, None, 1.0)
                for sample in rows
            ),
            strict=True,
        )
        means = torch.stack(column_mean).double().view(batch, lanes, channels)
        mean = means.mean(1)
        variance = torch.stack(column_variance).double().view(batch, lanes, channels).mean(1)
        variance += (means - mean[:, None]).square().mean(1)
        scale = torch.rsqrt(variance + self.eps)
        if self.weight is not None:
            scale = scale * self.weight
        _zero_constant_channels(rows, mean, variance, scale)
        shift = -mean * scale
        if self.bias is not None:
            shift = shift + self.bias
        normalised = torch.addcmul(
            shift.to(x.dtype).repeat(1, lanes)[:, None],
            rows,
            scale.to(x.dtype).repeat(1, lanes)[:, None],
        )
        return normalised.view(batch, *x.shape[2:], channels).movedim(-1, 1)


def _zero_constant_channels(
    rows: torch.Tensor, mean: torch.Tensor, variance: torch.Tensor, scale: torch.Tensor
) -> None:
    """Set ``scale`` (B, C) to zero where a channel of ``rows`` (B, rows, lanes * C) is
    constant. Its float32 column sums leave a variance of rounding, so only channels
    whose spread is that small are read again (one pass per such sample, none usually).
    """
    # a constant column's float32 mean is off by at most rows x half an ulp; 4x margin
    suspects = variance <= (rows.shape[1] * 2.0**-22 * mean).square()
    channels = mean.shape[1]
    for sample in suspects.any(1).nonzero().flatten().tolist():
        low, high = torch.aminmax(rows[sample], dim=0)
        low, high = low.view(-1, channels), high.view(-1, channels)
        constant = (low == high).all(0) & (high == high[:1]).all(0)
        scale[sample].masked_fill_(constant & suspects[sample], 0.0)


class SplitInputConvolution(nn.Module):
    """A 2D or 3D convolution (``source``, one group) of the channel concatenation of
    several inputs, computed without building the concatenation: one convolution per input
    with its slice of ``source``'s weight, summed in place (the first carries the bias).

    ``forward(inputs)`` takes the tensors ``(B, C_k, *spatial)`` in concatenation order,
    their C_k being ``widths``, and returns what ``source(torch.cat(inputs, 1))`` does up
    to float rounding (the summation order differs). On channels-last tensors the
    concatenation interleaves every input's channels, a copy as slow as a small
    convolution; the split convolutions of UNet++ tiny and small are no slower than the
    joined one (see benchmarks/README.md, section 15).
    """

    def __init__(self, source: nn.Conv2d | nn.Conv3d, widths: Sequence[int]) -> None:
        super().__init__()
        if source.groups != 1 or sum(widths) != source.in_channels:
            raise ValueError(
                f"widths {tuple(widths)} must add up to the {source.in_channels} input "
                f"channels of a convolution with one group (it has {source.groups})"
            )
        self.pieces = nn.ModuleList()
        start = 0
        for index, width in enumerate(widths):
            piece = type(source)(
                width,
                source.out_channels,
                source.kernel_size,
                source.stride,
                source.padding,
                source.dilation,
                bias=index == 0 and source.bias is not None,
                padding_mode=source.padding_mode,
            )
            piece.weight = nn.Parameter(source.weight.detach()[:, start : start + width].clone())
            if piece.bias is not None and source.bias is not None:
                piece.bias = nn.Parameter(source.bias.detach().clone())
            self.pieces.append(piece)
            start += width

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """``source`` applied to the concatenation of ``inputs`` (see class doc)."""
        if len(inputs) != len(self.pieces):
            raise ValueError(f"expected {len(self.pieces)} inputs, got {len(inputs)}")
        result: torch.Tensor = self.pieces[0](inputs[0])
        for piece, part in zip(self.pieces[1:], inputs[1:], strict=True):
            result += piece(part)
        return result


@runtime_checkable
class SplitsConcatenations(Protocol):
    """A network whose inference copy can take concatenated inputs as lists: after
    ``split_concatenations()`` its convolutions of concatenations are
    ``SplitInputConvolution``s and its forward passes them the lists."""

    def split_concatenations(self) -> None:
        """Switch this network (an inference copy) to split convolutions."""


def fold_batch_norms(network: nn.Module) -> None:
    """Fold, in place, each batch norm in eval mode that directly follows a 2D or 3D
    convolution inside an ``nn.Sequential`` (MONAI's ``Convolution`` and ``ADN`` are ones;
    eval-mode dropout and ``nn.Identity`` in between are passed over) into that
    convolution's weight and bias (PyTorch's ``fuse_conv_bn_eval``), the norm becoming
    ``nn.Identity``: one pass over the activations fewer per norm."""
    for sequence in list(network.modules()):
        if not isinstance(sequence, nn.Sequential):
            continue
        children = list(sequence.named_children())
        for index, (name, child) in enumerate(children):
            if not isinstance(child, nn.Conv2d | nn.Conv3d):
                continue
            for owner, norm_name, module in _run_after(sequence, children[index + 1 :]):
                if isinstance(module, nn.Identity | nn.Dropout) and not module.training:
                    continue
                usable = isinstance(module, _BatchNorm) and module.running_mean is not None
                if usable and not module.training:
                    setattr(sequence, name, fuse_conv_bn_eval(child, module))
                    setattr(owner, norm_name, nn.Identity())
                break


def _run_after(
    owner: nn.Module, siblings: list[tuple[str, nn.Module]]
) -> Iterator[tuple[nn.Module, str, nn.Module]]:
    """(owner, name, module) of the modules that run in ``siblings`` (children of the
    ``nn.Sequential`` ``owner``), in order, ``nn.Sequential``s opened up."""
    for name, module in siblings:
        if isinstance(module, nn.Sequential):
            yield from _run_after(module, list(module.named_children()))
        else:
            yield owner, name, module


def _channels_last_norm(module: nn.Module) -> nn.Module | None:
    """A ``ChannelsLastInstanceNorm`` for an instance norm without running statistics."""
    if isinstance(module, _InstanceNorm) and not module.track_running_stats:
        return ChannelsLastInstanceNorm(module)
    return None


def channels_last_for_inference(network: nn.Module) -> nn.Module:
    """A copy of ``network`` for inference: 4D weights in ``torch.channels_last``, 5D ones in
    ``torch.channels_last_3d`` (so convolutions run NHWC / NDHWC whatever the input's layout),
    eval-mode batch norms after a convolution folded into it (``fold_batch_norms``),
    instance norms without running statistics replaced by ``ChannelsLastInstanceNorm``, the
    convolutions of concatenations in a ``SplitsConcatenations`` network split, MONAI's Swin
    stages replaced by ``InferenceSwinStage`` and 1x1 convolutions by ``PointwiseConv``.
    Outputs equal the original's up to float rounding (about 1e-5 relative); ``network``
    itself is left unchanged."""
    prepared = copy.deepcopy(network)
    fold_batch_norms(prepared)
    for module in list(prepared.modules()):
        if isinstance(module, SplitsConcatenations):
            module.split_concatenations()
    swap_modules(prepared, _channels_last_norm)
    with_pointwise_convs(with_inference_swin_stages(prepared))
    for parameter in prepared.parameters():
        if parameter.dim() in CHANNELS_LAST:
            parameter.data = parameter.data.contiguous(memory_format=CHANNELS_LAST[parameter.dim()])
    return prepared


def inference_network(network: nn.Module, device: torch.device) -> nn.Module:
    """``network`` as medseg runs it for inference (predict, prune) on ``device``: on the CPU
    a network with 2D or 3D convolutions becomes its ``channels_last_for_inference`` copy; on
    CUDA, where that layout was never measured, and for a network without convolution
    weights it is ``network`` itself."""
    if device.type == "cpu" and any(p.dim() in CHANNELS_LAST for p in network.parameters()):
        return channels_last_for_inference(network)
    return network
