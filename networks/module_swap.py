"""Replacing a network's submodules in place, for the inference copies of
``inference_layout``: the one walk that the channels-last norm, the Swin stages and the
1x1 convolutions share (PyTorch has no public helper that swaps children by a rule)."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn


def swap_modules(
    network: nn.Module, replacement: Callable[[nn.Module], nn.Module | None]
) -> nn.Module:
    """``network`` with each submodule for which ``replacement`` returns a module set to
    that module in place (``None``: kept); returns ``network``. The modules are listed
    before any swap, so a replacement is not visited again."""
    for module in list(network.modules()):
        for name, child in list(module.named_children()):
            swapped = replacement(child)
            if swapped is not None:
                setattr(module, name, swapped)
    return network
