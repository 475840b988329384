"""The network registry: builders registered by name with their presets and declared
abilities, one entry point to build them.

Modelled on timm's ``register_model`` / ``create_model``; a duplicate name raises (as
torchvision does) instead of silently replacing the first builder. What a network can do
(prune, train in stages, run on 2D or 3D input, fix its slice depth, supervise deeply) is
declared with it in ``Abilities``, so pipelines ask the registry instead of probing the
module; ``tests/networks/test_registry.py`` checks every declaration against the network.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, cast

import torch.nn as nn

from medseg.errors import ConfigError

NetworkBuilder = Callable[..., nn.Module]


@dataclass(frozen=True)
class Abilities:
    """What a registered network does, declared beside its builder.

    ``spatial_dims``: the input dimensionalities it segments (2: images, 3: volumes).
    ``prunable``: it is a ``PrunableNetwork``: ``prune_level`` (1..``levels``) as a
    constructor option and a forward argument computes only what that head needs.
    ``modes``: the values of a ``StagedNetwork``'s ``mode`` a training stage may set (empty:
    not staged). ``fixed_depth``: the option whose value the last spatial axis of every
    input must equal (H-DenseUNet: ``"slices"``), None when any divisible size works.
    ``deep_supervision``: in training mode it returns a list of heads, the final first.
    ``planned_pooling``: it takes ``features`` and per-depth ``strides`` options, so the
    planner may match its depth and pooling to the patch.
    """

    spatial_dims: tuple[int, ...]
    prunable: bool = False
    modes: tuple[str, ...] = ()
    fixed_depth: str | None = None
    deep_supervision: bool = False
    planned_pooling: bool = False

    @property
    def staged(self) -> bool:
        """Whether training stages may switch the network's ``mode`` and freeze its 2D part."""
        return bool(self.modes)


class SizedNetwork(Protocol):
    """Every registered network: what each spatial input size must divide by."""

    def input_divisor(self) -> tuple[int, ...]:
        """Per spatial axis, the factor every input size must be a multiple of."""
        ...


class PrunableNetwork(Protocol):
    """A network whose ``Abilities.prunable`` is declared (UNet++)."""

    depth: int
    levels: int

    def level_parameter_names(self, level: int) -> list[str]:
        """``state_dict`` keys head ``level`` uses."""
        ...

    def level_parameter_count(self, level: int) -> int:
        """Parameters head ``level`` uses."""
        ...


class StagedNetwork(Protocol):
    """A network whose ``Abilities.modes`` is declared (H-DenseUNet)."""

    mode: str

    def freeze_2d(self, frozen: bool = True) -> None:
        """Stop (or restart) training the 2D part."""
        ...


@dataclass(frozen=True)
class _Entry:
    builder: NetworkBuilder
    network: type[nn.Module]
    presets: Mapping[str, Mapping[str, Any]]
    abilities: Abilities


_ENTRIES: dict[str, _Entry] = {}
# Arguments ``build_network`` itself passes to every builder, never options.
_BUILD_ARGUMENTS = {"self", "spatial_dims", "in_channels", "out_channels", "preset"}


def register_network(
    name: str,
    *,
    network: type[nn.Module],
    presets: Mapping[str, Mapping[str, Any]],
    abilities: Abilities,
) -> Callable[[NetworkBuilder], NetworkBuilder]:
    """Decorator that registers ``builder`` under ``name`` with the class it builds (whose
    constructor's keyword parameters are the options), its ``presets`` (name -> constructor
    arguments) and its ``abilities``; raises ``ValueError`` on reuse of a name."""

    def decorate(builder: NetworkBuilder) -> NetworkBuilder:
        if name in _ENTRIES:
            raise ValueError(f"network {name!r} is already registered")
        _ENTRIES[name] = _Entry(builder, network, presets, abilities)
        return builder

    return decorate


def available() -> list[str]:
    """Names of all registered networks, sorted."""
    return sorted(_ENTRIES)


def _entry(name: str) -> _Entry:
    if name not in _ENTRIES:
        raise ConfigError(f"unknown network {name!r}; available: {', '.join(available())}")
    return _ENTRIES[name]


def abilities(name: str) -> Abilities:
    """The declared ``Abilities`` of network ``name``; ``ConfigError`` for an unknown name."""
    return _entry(name).abilities


def presets(name: str) -> list[str]:
    """The preset names network ``name`` offers, in declaration order."""
    return list(_entry(name).presets)


def all_presets() -> list[str]:
    """Every preset name any registered network offers, sorted."""
    return sorted({preset for entry in _ENTRIES.values() for preset in entry.presets})


def option_names(name: str) -> list[str]:
    """The option names network ``name``'s constructor takes, sorted."""
    parameters = inspect.signature(_entry(name).network.__init__).parameters
    return sorted(set(parameters) - _BUILD_ARGUMENTS)


def resolved_options(name: str, preset: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The constructor options ``preset`` gives network ``name``, ``overrides`` applied."""
    return preset_options(_entry(name).presets, name, preset) | dict(overrides)


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
    name, preset, dimensionality or an option is unknown, or an option's value has the
    wrong type.
    """
    entry = _entry(name)
    supported = entry.abilities.spatial_dims
    if spatial_dims not in supported:
        dims = " or ".join(f"spatial_dims={dims}" for dims in supported)
        others = [other for other in available() if spatial_dims in abilities(other).spatial_dims]
        raise ConfigError(
            f"{name} takes {dims}, got spatial_dims={spatial_dims}; "
            f"networks for {spatial_dims}D: {', '.join(others)}"
        )
    preset_options(entry.presets, name, preset)
    accepted = option_names(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"network {name!r}: bad option ({', '.join(unknown)} unknown; "
            f"options: {', '.join(accepted)})"
        )
    try:
        return entry.builder(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=out_channels,
            preset=preset,
            **options,
        )
    except TypeError as error:  # a known option given a value of the wrong type
        raise ConfigError(f"network {name!r}: bad option ({error})") from error


def preset_options(
    presets: Mapping[str, Mapping[str, Any]], network: str, preset: str
) -> dict[str, Any]:
    """A copy of ``presets[preset]``; raises ``ConfigError`` naming the presets that exist."""
    if preset not in presets:
        raise ConfigError(
            f"network {network!r} has no preset {preset!r}; presets: {', '.join(presets)}"
        )
    return dict(presets[preset])


def as_prunable(network: nn.Module) -> PrunableNetwork:
    """``network``, of a network whose ``Abilities.prunable`` the caller checked, typed so."""
    return cast(PrunableNetwork, network)


def as_staged(network: nn.Module) -> StagedNetwork:
    """``network``, of a network whose ``Abilities.staged`` the caller checked, typed so."""
    return cast(StagedNetwork, network)


def input_divisor(network: nn.Module) -> tuple[int, ...]:
    """What each spatial input size of a registered ``network`` must divide by."""
    return cast(SizedNetwork, network).input_divisor()


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
