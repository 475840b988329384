"""medseg: medical image segmentation with UNet++, H-DenseUNet, Swin UNETR and Att-SwinU-Net.

The public API (``docs/api.md``)::

    model = medseg.load_model("runs/brats/model")      # once; then any number of images
    labels = model.segment(nibabel_image)              # same kind back, on the input's grid
    for labels in model.segment_many(paths): ...       # reads the next while one runs
    result = medseg.train("configs/demo.yaml", overrides=["train.epochs=3"])
    records = medseg.evaluate("preds", "data/test")    # one dict per case and label

The package root stays light so that ``medseg --help`` answers fast: torch, MONAI and
MLflow are imported by the sub-packages that need them, never here; the API's names are
imported on first use.
"""

from __future__ import annotations

import os
from typing import Any

from medseg.errors import CaseError, ConfigError, MedsegError

__version__ = "0.1.0"

# MLflow 3 sends usage events (runs, models logged) to its makers and writes an installation
# id under ~/.config unless told not to, and MONAI imports it along with itself. A clinical
# tool must not call out: off unless the user's environment says otherwise. (OpenVINO's
# telemetry is kept out where medseg imports it: ``backends.import_openvino``.)
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

__all__ = [
    "CaseError",
    "ConfigError",
    "MedsegError",
    "Model",
    "__version__",
    "evaluate",
    "load_model",
    "train",
]

# Public name -> the attribute of ``medseg.pipelines.api`` that implements it.
_API = {
    "Model": "Model",
    "load_model": "load_model",
    "train": "train",
    "evaluate": "evaluate_records",
}


def __getattr__(name: str) -> Any:
    """Import the API's names on first use (PEP 562), keeping ``import medseg`` light."""
    if name not in _API:
        raise AttributeError(f"module 'medseg' has no attribute {name!r}")
    from medseg.pipelines import api

    value = getattr(api, _API[name])
    globals()[name] = value
    return value
