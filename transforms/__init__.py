"""MONAI dictionary pipelines per modality and the label mappings between disk and network."""

from medseg.transforms.labels import LabelsToTargetd, paint_labels, probabilities
from medseg.transforms.presets import (
    Preprocessing,
    inference_transforms,
    training_transforms,
    validation_transforms,
)

__all__ = [
    "LabelsToTargetd",
    "Preprocessing",
    "inference_transforms",
    "paint_labels",
    "probabilities",
    "training_transforms",
    "validation_transforms",
]
