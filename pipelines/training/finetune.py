"""``train.init_from``: start training from a medseg model or from the papers' pretrained
weights (``pipelines/training/weight_layouts.py``), never downloaded, never unpickled.

Names are matched strictly: every tensor of the source must have a counterpart of the
same name (after the layout's renaming) and shape in the network, or the run stops with
the first one named. A medseg model must be of the same network and cover all of it,
except the output head when the labels differ: the head then keeps its fresh
initialisation, and the log says so. A layout file covers the encoder it is made for.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medseg.errors import ConfigError
from medseg.pipelines.model_dir import ModelConfig, is_run_dir, open_model

logger = logging.getLogger(__name__)

WRAPPERS = ("state_dict", "model", "network")


@dataclass
class Initialisation:
    """What ``initialise_from`` did: the ``source``, its ``layout`` (``medseg`` or a
    ``weight_layouts`` name), the network tensors it ``loaded``, those it ``reinitialised``
    (the output head, for new labels) and the source tensors it ``dropped`` (a layout's
    classifier or pre-training heads)."""

    source: str
    layout: str
    loaded: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


def is_medseg_model(source: str) -> bool:
    """Whether ``source`` names a medseg model (directory, run directory, package,
    training checkpoint beside its run's ``model/``, or MLflow URI) rather than a file of
    pretrained weights in another layout."""
    if source.startswith(("runs:/", "models:/")):
        return True
    path = Path(source)
    if path.is_dir() or is_run_dir(path) or source.endswith(".medseg.zip"):
        return True
    return path.suffix == ".pt" and (path.parent / "model" / "config.yaml").is_file()


def initialise_from(
    network: torch.nn.Module, source: str | Path, config: ModelConfig
) -> Initialisation:
    """Copy the weights of ``source`` into ``network`` (built from ``config``) in place.

    ``source`` is a medseg model (anything ``open_model`` takes) or a local file
    (``.pt``/``.pth``/``.bin`` read with ``torch.load(weights_only=True)``, or
    ``.safetensors``) in one of ``weight_layouts.LAYOUTS``. Returns what moved; raises
    ``ConfigError`` naming the source and the first tensor that does not fit.
    """
    source = str(source)
    if is_medseg_model(source):
        result, state = _from_medseg_model(network, source, config)
    else:
        result, state = _from_layout_file(network, source, config)
    expected = network.state_dict()
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ConfigError(
                f"{source}: tensor {name} has shape {list(tensor.shape)}, the network needs "
                f"{list(expected[name].shape)} (train.init_from needs the same network "
                "settings, channels and preset)"
            )
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ConfigError(f"{source}: tensor {name} holds NaN or infinite values")
    with torch.no_grad():
        for name, tensor in state.items():
            expected[name].copy_(tensor.to(expected[name].dtype))
    result.loaded = sorted(state)
    _log(result, len(expected))
    return result


def _from_medseg_model(
    network: torch.nn.Module, source: str, config: ModelConfig
) -> tuple[Initialisation, dict[str, torch.Tensor]]:
    from medseg.networks import output_layers

    source_config, source_network = open_model(source)
    if source_config.network.name != config.network.name:
        raise ConfigError(
            f"{source}: a {source_config.network.name} model; this run trains "
            f"{config.network.name} (train.init_from takes the same network)"
        )
    state = dict(source_network.state_dict())
    result = Initialisation(source, "medseg")
    if source_config.labels != config.labels:
        heads = output_layers(network, config.network.out_channels)
        head_names = {
            f"{module_name}.{parameter}"
            for module_name, module in network.named_modules()
            if any(module is head for head in heads)
            for parameter, _ in module.named_parameters(recurse=False)
        }
        result.reinitialised = sorted(head_names)
        for name in head_names:
            state.pop(name, None)
    expected = set(network.state_dict())
    missing = sorted(expected - set(state) - set(result.reinitialised))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        first = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise ConfigError(
            f"{source}: weights do not fit this network ({len(missing)} missing, "
            f"{len(unexpected)} unexpected tensors; first: {first})"
        )
    return result, state


def read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a local weights file: safetensors, or a torch file read with
    ``weights_only=True`` (a pickle that is more than tensors is refused, never run),
    unwrapped from a ``state_dict``/``model``/``network`` entry. ``ConfigError`` else."""
    from medseg.files import require_regular_file

    try:
        require_regular_file(path)
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"{path}: train.init_from file not found") from None
    except ConfigError:
        raise
    except Exception as error:  # torch and safetensors raise many types for a bad file
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"{path}: not a weights file medseg can read safely ({reason})") from None
    while isinstance(state, dict):
        wrapper = next((key for key in WRAPPERS if isinstance(state.get(key), dict)), None)
        if wrapper is None:
            break
        state = state[wrapper]
    if not isinstance(state, dict) or not state:
        raise ConfigError(f"{path}: holds no mapping of tensors")
    tensors = {name: value for name, value in state.items() if isinstance(value, torch.Tensor)}
    if len(tensors) != len(state):
        other = next(name for name in state if name not in tensors)
        raise ConfigError(f"{path}: entry {other} is not a tensor")
    return tensors


def _from_layout_file(
    network: torch.nn.Module, source: str, config: ModelConfig
) -> tuple[Initialisation, dict[str, torch.Tensor]]:
    from medseg.pipelines.training.weight_layouts import LAYOUTS, find_layout

    tensors = read_weights_file(Path(source))
    layout = find_layout(tensors)
    if layout is None:
        known = ", ".join(f"{item.name} ({item.network})" for item in LAYOUTS)
        raise ConfigError(
            f"{source}: not a medseg model and in none of the layouts train.init_from "
            f"reads: {known}"
        )
    if layout.network != config.network.name:
        raise ConfigError(
            f"{source}: {layout.name} weights initialise {layout.network}; this run trains "
            f"{config.network.name}"
        )
    expected = network.state_dict()
    result = Initialisation(source, layout.name)
    state = {}
    for name, tensor in tensors.items():
        try:
            target = layout.rename(name)
        except KeyError:
            raise ConfigError(
                f"{source}: tensor {name} is not part of the {layout.name} layout"
            ) from None
        if target is None:
            result.dropped.append(name)
        elif target not in expected:
            raise ConfigError(
                f"{source}: tensor {name} ({layout.name}) maps to {target}, which this "
                f"{config.network.name} does not have (another preset?)"
            )
        else:
            state[target] = tensor
    return result, state


def _log(result: Initialisation, total: int) -> None:
    logger.info(
        "init_from %s (%s): loaded %d of the network's %d tensors%s",
        result.source,
        result.layout,
        len(result.loaded),
        total,
        f"; dropped {len(result.dropped)} of the source's" if result.dropped else "",
    )
    if result.reinitialised:
        logger.info(
            "init_from: the labels differ, so the output head (%s) is re-initialised",
            ", ".join(result.reinitialised),
        )
