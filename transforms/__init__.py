"""MONAI dictionary pipelines per modality and the label mappings between disk and network.

The names below load on first use, so importing one light module of this package (such as
``spec``) does not import MONAI.
"""

from __future__ import annotations

import importlib
from typing import Any

_MODULE_OF = {
    "LabelsToTargetd": "labels",
    "paint_labels": "labels",
    "probabilities": "labels",
    "Preprocessing": "spec",
    "inference_transforms": "presets",
    "training_transforms": "presets",
    "validation_transforms": "presets",
}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'medseg.transforms' has no attribute {name!r}")
    return getattr(importlib.import_module(f"medseg.transforms.{_MODULE_OF[name]}"), name)
