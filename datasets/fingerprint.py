"""A dataset fingerprint: what the training images and labels are like, measured once.

nnU-Net's idea (its ``DatasetFingerprintExtractor``): geometry and intensity statistics of
the training set decide the preprocessing, the patch and the network, instead of a config
guessed by hand. Written here on medseg's readers and datasets: geometry comes from the
headers; voxels are read one case at a time, and intensities are kept only as a bounded
random sample per case and channel, so a dataset of any size costs one pass of reads and
memory for one case (a 512x512x500 CT: about 0.7 GB at the peak).

All shapes and spacings are in the RAS+ axis order that preprocessing turns images to.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from medseg.datasets.base import Case, DatasetIndex
from medseg.datasets.headers import NIFTI_SUFFIXES, inspect_image, suffix_of

# Values kept per case and channel: enough for percentiles to a tenth of a percent, and a
# fixed memory whatever the size of the dataset.
SAMPLES_PER_CASE = 10_000
PERCENTILES = (0.5, 1, 5, 10, 25, 50, 75, 90, 95, 99, 99.5)
FINGERPRINT_VERSION = 1


@dataclass
class CaseGeometry:
    """One case's grid: ``shape`` (voxels) and ``spacing`` (mm) in RAS order, the axis codes
    it is stored in (``"LPS"``), the box of the non-zero voxels of all channels
    (``cropped_shape``, RAS order) and the share of the voxels it keeps (1.0: cropping to
    non-zero removes nothing)."""

    shape: list[int]
    spacing: list[float]
    orientation: str
    cropped_shape: list[int]
    crop_ratio: float


@dataclass
class Fingerprint:
    """What ``fingerprint_dataset`` measured.

    ``cases``: per-case geometry; ``samples``: channel name -> ``"image"`` / ``"foreground"``
    -> float32 values sampled uniformly from every case (whole image, and voxels under any
    label); ``zero_share``: channel -> per-case share of voxels exactly 0; ``labels``: name
    -> per-case voxel counts and connected-component sizes. ``to_json`` summarises it all
    (percentiles, medians) without the raw samples.
    """

    layout: str
    modality: str
    spatial_dims: int
    channels: list[str]
    case_ids: list[str]
    cases: list[CaseGeometry]
    samples: dict[str, dict[str, np.ndarray]]
    zero_share: dict[str, list[float]]
    labels: dict[str, dict[str, list[Any]]] = field(default_factory=dict)

    @property
    def spacings(self) -> np.ndarray:
        """``(cases, spatial_dims)`` voxel sizes in mm, RAS order."""
        return np.array([case.spacing for case in self.cases], dtype=float)

    @property
    def shapes(self) -> np.ndarray:
        """``(cases, spatial_dims)`` sizes in voxels, RAS order."""
        return np.array([case.shape for case in self.cases], dtype=float)

    @property
    def cropped_shapes(self) -> np.ndarray:
        """``(cases, spatial_dims)`` sizes of the non-zero boxes in voxels, RAS order."""
        return np.array([case.cropped_shape for case in self.cases], dtype=float)

    @property
    def median_crop_ratio(self) -> float:
        """Median share of an image that cropping to its non-zero voxels keeps."""
        return float(np.median([case.crop_ratio for case in self.cases]))

    def to_json(self) -> dict[str, Any]:
        """The fingerprint as JSON-ready data (``fingerprint.json``)."""
        orientations = Counter(case.orientation for case in self.cases)
        return {
            "version": FINGERPRINT_VERSION,
            "layout": self.layout,
            "modality": self.modality,
            "spatial_dims": self.spatial_dims,
            "cases": len(self.cases),
            "geometry": {
                "shape": _spread(self.shapes),
                "spacing": _spread(self.spacings),
                "orientations": dict(orientations.most_common()),
                "crop_to_nonzero_ratio": _spread(np.array([c.crop_ratio for c in self.cases])),
                "per_case": {
                    case_id: vars(case)
                    for case_id, case in zip(self.case_ids, self.cases, strict=True)
                },
            },
            "channels": {
                name: {
                    "image": _intensity_summary(self.samples[name]["image"]),
                    "foreground": _intensity_summary(self.samples[name]["foreground"]),
                    "zero_share": _spread(np.array(self.zero_share[name])),
                }
                for name in self.channels
            },
            "labels": {
                name: {
                    "voxels": _spread(np.array(stats["voxels"], dtype=float)),
                    "cases_with_label": int(sum(1 for v in stats["voxels"] if v > 0)),
                    "components": _spread(np.array(stats["components"], dtype=float)),
                    "component_voxels": _spread(
                        np.array([s for sizes in stats["component_sizes"] for s in sizes], float)
                    ),
                }
                for name, stats in self.labels.items()
            },
        }


def _spread(values: np.ndarray) -> dict[str, Any]:
    """Median, 10th percentile, min and max of ``values`` along the first axis."""
    if values.size == 0:
        return {"median": None, "p10": None, "min": None, "max": None}

    def listed(array: np.ndarray) -> Any:
        return np.round(array, 4).tolist()

    return {
        "median": listed(np.median(values, axis=0)),
        "p10": listed(np.percentile(values, 10, axis=0)),
        "min": listed(values.min(axis=0)),
        "max": listed(values.max(axis=0)),
    }


def _intensity_summary(values: np.ndarray) -> dict[str, Any]:
    if values.size == 0:
        return {"samples": 0}
    percentiles = np.percentile(values, PERCENTILES)
    return {
        "samples": int(values.size),
        "mean": round(float(values.mean()), 4),
        "std": round(float(values.std()), 4),
        "percentiles": {
            f"p{p:g}": round(float(v), 4) for p, v in zip(PERCENTILES, percentiles, strict=True)
        },
    }


def _storage_geometry(
    path: Path, spatial_dims: int
) -> tuple[list[int], list[float], str, list[int]]:
    """Shape and spacing in storage order, the axis codes, and the storage axis of each RAS
    axis in turn."""
    header = inspect_image(path)
    shape = list(header.shape[:spatial_dims])
    identity = list(range(spatial_dims))
    if header.affine is None:
        return shape, [1.0] * spatial_dims, "RAS"[:spatial_dims], identity
    affine = np.asarray(header.affine, dtype=float)
    zooms = [round(float(z), 6) for z in np.sqrt((affine[:3, :spatial_dims] ** 2).sum(axis=0))]
    if spatial_dims == 2:
        return shape, zooms, "RA", identity
    ornt = nib.io_orientation(affine)
    codes = "".join(nib.orientations.ornt2axcodes(ornt))
    return shape, zooms, codes, [int(axis) for axis in np.argsort(ornt[:, 0].astype(int))]


def _read_channels(case: Case, channels: int) -> list[np.ndarray]:
    """Each channel of ``case`` as a float32 array of its spatial shape (storage order)."""
    arrays = []
    for path in case.image:
        if suffix_of(path) in NIFTI_SUFFIXES:
            data = nib.load(path).get_fdata(dtype=np.float32)
            if data.ndim == 4:
                arrays += [np.ascontiguousarray(data[..., k]) for k in range(data.shape[-1])]
            else:
                arrays.append(data)
        else:
            arrays += _read_other(path)
    if len(arrays) != channels:
        raise ValueError(f"{case.image[0]}: {len(arrays)} channels, expected {channels}")
    return arrays


def _read_other(path: Path) -> list[np.ndarray]:
    from monai.transforms import LoadImage

    from medseg.transforms.readers import image_readers

    loaded = LoadImage(reader=image_readers(), image_only=True, ensure_channel_first=True)(
        str(path)
    )
    return [np.asarray(channel, dtype=np.float32) for channel in loaded]


def _read_label(path: Path) -> np.ndarray:
    if suffix_of(path) in NIFTI_SUFFIXES:
        data = np.asanyarray(nib.load(path).dataobj)
    else:
        data = _read_other(path)[0]
    return np.rint(data).astype(np.int16)


def _nonzero_extent(arrays: Sequence[np.ndarray]) -> list[int]:
    """Size per axis of the box holding every non-zero voxel of any channel."""
    nonzero = np.zeros(arrays[0].shape, dtype=bool)
    for array in arrays:
        nonzero |= array != 0
    if not nonzero.any():
        return list(nonzero.shape)
    extent = []
    for axis in range(nonzero.ndim):
        others = tuple(a for a in range(nonzero.ndim) if a != axis)
        present = np.flatnonzero(nonzero.any(axis=others))
        extent.append(int(present[-1] - present[0] + 1))
    return extent


def _sample(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if values.size <= SAMPLES_PER_CASE:
        return values.astype(np.float32, copy=True)
    return values[rng.choice(values.size, SAMPLES_PER_CASE, replace=False)].astype(np.float32)


def _label_statistics(label: np.ndarray, structures: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    from scipy import ndimage

    stats = {}
    for name, values in structures.items():
        mask = np.isin(label, values)
        components, count = ndimage.label(mask)
        sizes = np.bincount(components.ravel())[1:] if count else np.zeros(0, dtype=int)
        del components
        stats[name] = {"voxels": int(mask.sum()), "components": int(count), "sizes": sizes}
    return stats


def fingerprint_dataset(
    index: DatasetIndex, cases: Sequence[Case] | None = None, *, seed: int = 0
) -> Fingerprint:
    """Measure ``cases`` (default: all of ``index``'s) one at a time.

    Returns a ``Fingerprint``: geometry from each first channel's header (RAS order), a
    uniform sample of ``SAMPLES_PER_CASE`` values per case and channel over the whole image
    and over the labelled voxels, the share of exact zeros, how much cropping to non-zero
    keeps, and per labelled structure (the scheme's classes or regions) its voxel count and
    connected components (voxels joined through faces, ``scipy.ndimage.label``'s default).
    Raises ``ValueError`` naming the file for a case whose channels do not fit the index.
    """
    cases = list(index.cases if cases is None else cases)
    rng = np.random.default_rng(seed)
    channels = list(index.channels)
    samples: dict[str, dict[str, list[np.ndarray]]] = {
        name: {"image": [], "foreground": []} for name in channels
    }
    zero_share: dict[str, list[float]] = {name: [] for name in channels}
    structures = index.labels.foreground
    labelled_values = sorted({value for values in structures.values() for value in values})
    labels: dict[str, dict[str, list[Any]]] = {
        name: {"voxels": [], "components": [], "component_sizes": []} for name in structures
    }
    geometry = []
    for case in cases:
        shape, spacing, orientation, order = _storage_geometry(case.image[0], index.spatial_dims)
        foreground = None
        if case.label is not None:
            label = _read_label(case.label)
            for name, stats in _label_statistics(label, structures).items():
                labels[name]["voxels"].append(stats["voxels"])
                labels[name]["components"].append(stats["components"])
                labels[name]["component_sizes"].append(stats["sizes"].tolist())
            foreground = np.isin(label, labelled_values)
            del label
        arrays = _read_channels(case, len(channels))
        for name, array in zip(channels, arrays, strict=True):
            flat = array.reshape(-1)
            samples[name]["image"].append(_sample(flat, rng))
            if foreground is not None and foreground.shape == array.shape[: foreground.ndim]:
                samples[name]["foreground"].append(_sample(array[foreground], rng))
            zero_share[name].append(round(float(np.count_nonzero(flat == 0) / flat.size), 4))
        extent = _nonzero_extent(arrays)[: index.spatial_dims]
        geometry.append(
            CaseGeometry(
                shape=[shape[axis] for axis in order],
                spacing=[spacing[axis] for axis in order],
                orientation=orientation,
                cropped_shape=[extent[axis] for axis in order],
                crop_ratio=round(float(np.prod(extent) / np.prod(shape)), 4),
            )
        )
        del arrays, foreground
    return Fingerprint(
        layout=index.layout,
        modality=index.modality,
        spatial_dims=index.spatial_dims,
        channels=channels,
        case_ids=[case.id for case in cases],
        cases=geometry,
        samples={
            name: {kind: _joined(parts) for kind, parts in by_kind.items()}
            for name, by_kind in samples.items()
        },
        zero_share=zero_share,
        labels=labels,
    )


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
