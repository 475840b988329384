"""The networks of medseg, built by name: ``build_network("unetpp", ...)``.

Importing this package registers every network module; ``available()`` lists them.
"""

from medseg.networks import unetpp
from medseg.networks._registry import (
    available,
    build_network,
    output_layers,
    register_network,
)

__all__ = [
    "available",
    "build_network",
    "output_layers",
    "register_network",
    "unetpp",
]
