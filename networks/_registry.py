"""The network registry: builders registered by name, one entry point to build them.

Modelled on timm's ``register_model`` / ``create_model``; a duplicate name raises (as
torchvision does) instead of silently replacing the first builder.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn as nn

from medseg.errors import ConfigError

NetworkBuilder = Callable[..., nn.Module]

_BUILDERS: dict[str, NetworkBuilder] = {}


def register_network(name: str) -> Callable[[NetworkBuilder], NetworkBuilder]:
    """Decorator that registers ``builder`` under ``name``; raises ``ValueError`` on reuse."""

    def decorate(builder: NetworkBuilder) -> NetworkBuilder:
        if name in _BUILDERS:
            raise ValueError(f"network {name!r} is already registered")
        _BUILDERS[name] = builder
        return builder

    return decorate


def available() -> list[str]:
    """Names of all registered networks, sorted."""
    return sorted(_BUILDERS)


def build_network(
    name: str,
    *,
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    preset: str = "paper",
    **options: Any,
) -> nn.Module:
    """Build the registered network ``name`` from its ``preset``, ``options`` overriding it.

    Returns an ``nn.Module`` mapping ``(B, in_channels, *spatial)`` to logits
    ``(B, out_channels, *spatial)`` (a list of heads, final first, for deep-supervised
    networks in training mode). Raises ``ConfigError`` naming the valid choices when the
    name, preset or an option is unknown.
    """
    if name not in _BUILDERS:
        raise ConfigError(f"unknown network {name!r}; available: {', '.join(available())}")
    try:
        return _BUILDERS[name](
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=out_channels,
            preset=preset,
            **options,
        )
    except TypeError as error:
        raise ConfigError(f"network {name!r}: bad option ({error})") from None


def preset_options(presets: dict[str, dict[str, Any]], network: str, preset: str) -> dict[str, Any]:
    """A copy of ``presets[preset]``; raises ``ConfigError`` naming the presets that exist."""
    if preset not in presets:
        raise ConfigError(
            f"network {network!r} has no preset {preset!r}; presets: {', '.join(presets)}"
        )
    return dict(presets[preset])


def output_layers(network: nn.Module, out_channels: int) -> list[nn.Module]:
    """The layers that produce the network's logits: convolutions or linear layers whose
    output width is ``out_channels`` (every head of a deep-supervised network).

    The registry's tests check that this finds exactly the heads of every network.
    """
    kinds = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
    return [
        module
        for module in network.modules()
        if isinstance(module, kinds)
        and getattr(module, "out_channels", getattr(module, "out_features", None)) == out_channels
    ]
