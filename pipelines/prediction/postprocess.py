"""Post-processing of label maps per structure, on the input's own grid (mm-aware).

Connected components and hole filling come from ``scipy.ndimage``; MONAI's
``KeepLargestConnectedComponent`` works on one-hot tensors of the network's grid, while
these rules run on the written label map, where sizes in ml are meaningful.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medseg.datasets.base import LabelScheme
from medseg.pipelines.model_dir import Postprocessing


def _paint_value(scheme: LabelScheme, name: str) -> int:
    index = scheme.names.index(name)
    return scheme.paint[index] if scheme.mode == "regions" else scheme.values[index][0]


def postprocess(
    labels: np.ndarray, scheme: LabelScheme, rules: Postprocessing, voxel_ml: float
) -> np.ndarray:
    """Apply ``rules`` to a label map of disk values (uint8, any dimensionality).

    Removed voxels become background (0); filled holes take the structure's own value.
    ``voxel_ml`` is the volume of one voxel in ml. Returns a new array.
    """
    result = labels.copy()
    values = scheme.foreground

    def organ(name: str) -> np.ndarray:
        members = [name, *(inner for inner, outer in rules.inside.items() if outer == name)]
        return np.isin(result, [v for member in members for v in values[member]])

    for name in rules.largest_component:
        components, count = ndimage.label(organ(name))
        if count > 1:
            counts = np.bincount(components.ravel())[1:]
            result[(components > 0) & (components != counts.argmax() + 1)] = 0
    for name, minimum in rules.min_component_ml.items():
        components, count = ndimage.label(organ(name))
        if count:
            volumes_ml = np.bincount(components.ravel()) * voxel_ml
            small = np.flatnonzero(volumes_ml < minimum)
            result[np.isin(components, small[small > 0])] = 0
    for name in rules.fill_holes:
        region = organ(name)
        result[ndimage.binary_fill_holes(region) & ~region] = _paint_value(scheme, name)
    for name, container in rules.inside.items():
        components, _ = ndimage.label(organ(container))
        touching = np.unique(components[np.isin(result, values[container])])
        envelope = np.isin(components, touching[touching > 0])
        result[np.isin(result, values[name]) & ~envelope] = 0
    return result
