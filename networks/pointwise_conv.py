"""1x1 convolutions as matrix products over channels-last tensors, for inference on the CPU.

With one intra-op thread and a batch under 16, PyTorch sends a 1x1(x1) convolution to its
unblocked ``slow_conv3d`` / ``slow_conv2d`` kernel instead of oneDNN. On a channels-last
input that kernel first copies the tensor to NCDHW and returns NCDHW, so the layers after it
leave the channels-last layout too. In Swin UNETR small (two 64^3 windows, one thread) the
residual 1x1 convolutions, the copies and the instance norms falling back to PyTorch's took
15 % of the forward; as a ``torch.nn.functional.linear`` over the channel axis the same
product runs 6x faster and keeps the layout. Written here because the choice of kernel is
PyTorch's dispatch rule, which has no switch.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from medseg.networks.module_swap import swap_modules


class PointwiseConv(nn.Module):
    """A 1x1 ``nn.Conv2d`` / ``nn.Conv3d`` (stride 1, no padding, one group) that, when
    PyTorch runs single-threaded and the input is channels-last, computes its product as a
    matrix product over the channel axis.

    Holds ``source``'s ``weight`` ``(C_out, C_in, 1, ...)`` and ``bias`` (same state-dict
    keys). ``forward(x)`` maps ``(B, C_in, *spatial)`` float to ``(B, C_out, *spatial)``,
    channels-last when ``x`` is.
    """

    def __init__(self, source: nn.Conv2d | nn.Conv3d) -> None:
        super().__init__()
        self.weight = source.weight
        self.bias = source.bias
        self.convolve = F.conv2d if isinstance(source, nn.Conv2d) else F.conv3d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution of ``x``, ``(B, C_out, *spatial)``."""
        channels_last = x.movedim(1, -1)
        if torch.get_num_threads() == 1 and channels_last.is_contiguous():
            return F.linear(channels_last, self.weight.flatten(1), self.bias).movedim(-1, 1)
        return self.convolve(x, self.weight, self.bias)


def is_pointwise(module: nn.Module) -> bool:
    """Whether ``module`` is a plain 1x1(x1) ``nn.Conv2d`` / ``nn.Conv3d``: stride 1, no
    padding or dilation, one group (what ``PointwiseConv`` computes)."""
    return (
        type(module) in (nn.Conv2d, nn.Conv3d)
        and all(size == 1 for size in module.kernel_size)
        and all(step == 1 for step in module.stride)
        and all(pad == 0 for pad in module.padding)
        and module.groups == 1
    )


def with_pointwise_convs(network: nn.Module) -> nn.Module:
    """``network`` with every 1x1 convolution (``is_pointwise``) replaced in place by a
    ``PointwiseConv`` over the same weights; returns ``network``."""
    return swap_modules(
        network, lambda child: PointwiseConv(child) if is_pointwise(child) else None
    )
