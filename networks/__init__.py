"""The four networks of medseg, built by name: ``build_network("unetpp", ...)``.

Importing this package registers every network module; ``available()`` lists them.
"""

from medseg.networks import att_swinunet, hdenseunet, swin_unetr, unetpp
from medseg.networks._registry import available, build_network, output_layers, register_network

__all__ = [
    "att_swinunet",
    "available",
    "build_network",
    "hdenseunet",
    "output_layers",
    "register_network",
    "swin_unetr",
    "unetpp",
]
