"""The four networks of medseg, built by name: ``build_network("unetpp", ...)``.

Importing this package registers every network module; ``available()`` lists them.
"""

from medseg.networks import att_swinunet, hdenseunet, swin_unetr, unetpp
from medseg.networks._registry import (
    Abilities,
    PrunableNetwork,
    StagedNetwork,
    abilities,
    all_presets,
    as_prunable,
    as_staged,
    available,
    build_network,
    input_divisor,
    output_layers,
    presets,
    register_network,
    resolved_options,
)

__all__ = [
    "Abilities",
    "PrunableNetwork",
    "StagedNetwork",
    "abilities",
    "all_presets",
    "as_prunable",
    "as_staged",
    "att_swinunet",
    "available",
    "build_network",
    "hdenseunet",
    "input_divisor",
    "output_layers",
    "presets",
    "register_network",
    "resolved_options",
    "swin_unetr",
    "unetpp",
]
