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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from medseg.datasets.base import Case, DatasetIndex
from medseg.datasets.headers import inspect_image
from medseg.datasets.image_io import NIFTI_SUFFIXES, suffix_of
from medseg.errors import ConfigError

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
    non-zero removes nothing), and the share of voxels in the body (``body_share``: above
    ``BODY_FRACTION`` of the first channel's ``BODY_PERCENTILE``-th percentile, which low
    background noise does not reach; measured for MRI only, 1.0 otherwise)."""

    shape: list[int]
    spacing: list[float]
    orientation: str
    cropped_shape: list[int]
    crop_ratio: float
    body_share: float = 1.0


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

    @property
    def median_body_share(self) -> float:
        """Median share of an image's voxels in its body (see ``CaseGeometry``)."""
        return float(np.median([case.body_share for case in self.cases]))

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
                "body_share": _spread(np.array([c.body_share for c in self.cases])),
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


def significant(values: Any, digits: int = 6) -> np.ndarray:
    """``values`` rounded to ``digits`` significant figures (EM voxels are 4e-6 mm wide)."""
    array = np.asarray(values, dtype=float)
    scale = 10.0 ** (digits - 1 - np.floor(np.log10(np.abs(np.where(array == 0, 1, array)))))
    return np.round(array * scale) / scale


def _spread(values: np.ndarray) -> dict[str, Any]:
    """Median, 10th percentile, min and max of ``values`` along the first axis."""
    if values.size == 0:
        return {"median": None, "p10": None, "min": None, "max": None}

    def listed(array: np.ndarray) -> Any:
        return significant(array).tolist()

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
    zooms = significant(np.sqrt((affine[:3, :spatial_dims] ** 2).sum(axis=0))).tolist()
    if spatial_dims == 2:
        return shape, zooms, "RA", identity
    ornt = nib.io_orientation(affine)
    codes = "".join(nib.orientations.ornt2axcodes(ornt))
    return shape, zooms, codes, [int(axis) for axis in np.argsort(ornt[:, 0].astype(int))]


# Voxels read at a time from a NIfTI channel: 32 slices of a 512 x 512 CT as float32.
SLAB_VOXELS = 1 << 23


def _channel_slabs(case: Case, channels: int) -> Iterator[Iterator[tuple[slice, np.ndarray]]]:
    """Per channel of ``case``, its (last-axis range, float32 slab) pieces in storage order:
    NIfTI read a slab at a time, so a channel never sits whole in memory; other formats
    read whole (their readers have no partial reads)."""
    found = 0
    for path in case.image:
        if suffix_of(path) in NIFTI_SUFFIXES:
            data = nib.load(path).dataobj
            count = data.shape[3] if len(data.shape) == 4 else 1
            for channel in range(count):
                found += 1
                yield _nifti_slabs(data, channel if len(data.shape) == 4 else None)
        else:
            for array in _read_other(path):
                found += 1
                yield iter([(slice(0, array.shape[-1]), array)])
    if found != channels:
        raise ConfigError(f"{case.image[0]}: {found} channels, expected {channels}")


def _nifti_slabs(data: Any, channel: int | None) -> Iterator[tuple[slice, np.ndarray]]:
    shape = data.shape[:3] if channel is not None else data.shape
    if len(shape) < 3:
        whole = np.asarray(data, dtype=np.float32)
        yield slice(0, shape[-1]), whole if channel is None else whole[..., channel]
        return
    step = max(1, SLAB_VOXELS // (shape[0] * shape[1]))
    for start in range(0, shape[2], step):
        part = slice(start, min(start + step, shape[2]))
        slab = data[:, :, part] if channel is None else data[:, :, part, channel]
        yield part, np.asarray(slab, dtype=np.float32)


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
    if not np.issubdtype(data.dtype, np.integer):
        data = np.rint(data)
    # Label values of 0..255 (every layout's) fit one byte: a 512x512x500 label in 131 MB.
    compact = np.uint8 if data.min() >= 0 and data.max() <= 255 else np.int16
    return data.astype(compact, copy=False)


def _member_of(label: np.ndarray, values: Sequence[int]) -> np.ndarray:
    """``np.isin(label, values)`` for small non-negative label values, by table look-up (a
    CT's 131 M voxels in a fraction of ``np.isin``'s time)."""
    table = np.zeros(max(int(label.max()), *values) + 1, dtype=bool)
    table[[value for value in values if value >= 0]] = True
    return table[label if label.dtype == np.uint8 else np.clip(label, 0, None)]


class _ChannelPass:
    """Statistics of one case gathered slab by slab: samples, exact zeros, and which
    indices along each axis hold a non-zero voxel of any channel."""

    def __init__(self, shape: Sequence[int], foreground: np.ndarray | None) -> None:
        self.present = [np.zeros(size, dtype=bool) for size in shape]
        self.foreground = foreground
        self.voxels = int(np.prod(shape))
        self.foreground_voxels = int(foreground.sum()) if foreground is not None else 0

    def measure(
        self, slabs: Iterator[tuple[slice, np.ndarray]], rng: np.random.Generator, source: Path
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """Whole-image sample, foreground sample and zero share of one channel of the image
        file ``source``; ``ConfigError`` names it when it holds NaN or infinite voxels."""
        image, foreground, zeros = [], [], 0
        for part, slab in slabs:
            if not np.isfinite(slab).all():
                raise ConfigError(f"{source}: holds NaN or infinite voxels; cannot plan with it")
            nonzero = slab != 0
            zeros += slab.size - int(np.count_nonzero(nonzero))
            for axis in range(slab.ndim):
                hit = nonzero.any(axis=tuple(a for a in range(slab.ndim) if a != axis))
                if axis == slab.ndim - 1:
                    self.present[axis][part] |= hit
                else:
                    self.present[axis] |= hit
            image.append(_share(slab.reshape(-1), slab.size / self.voxels, rng))
            if self.foreground is not None and self.foreground.shape == self.present_shape:
                values = slab[self.foreground[..., part]]
                share = values.size / max(self.foreground_voxels, 1)
                foreground.append(_share(values, share, rng))
        return _joined(image), _joined(foreground), round(zeros / self.voxels, 4)

    @property
    def present_shape(self) -> tuple[int, ...]:
        """The spatial shape being measured."""
        return tuple(len(axis) for axis in self.present)

    def extent(self) -> list[int]:
        """Size per axis of the box holding every non-zero voxel seen (all when none)."""
        if not any(axis.any() for axis in self.present):
            return list(self.present_shape)
        extent = []
        for axis in self.present:
            hit = np.flatnonzero(axis)
            extent.append(int(hit[-1] - hit[0] + 1))
        return extent


def _body_share(slabs: Iterator[tuple[slice, np.ndarray]], sample: np.ndarray) -> float:
    """Share of a channel's voxels above ``BODY_FRACTION`` of its ``BODY_PERCENTILE``-th
    percentile (estimated from ``sample``): the rule medseg's body normalisation crops and
    z-scores with, so that skull-stripped MRI plans it whether its air is zero or noise."""
    from medseg.transforms.presets import BODY_FRACTION, BODY_PERCENTILE

    if sample.size == 0:
        return 1.0
    threshold = BODY_FRACTION * max(float(np.percentile(sample, BODY_PERCENTILE)), 0.0)
    above = voxels = 0
    for _, slab in slabs:
        above += int(np.count_nonzero(slab > threshold))
        voxels += slab.size
    return round(above / max(voxels, 1), 4)


def _share(values: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """A uniform sample of ``values`` of ``share`` of ``SAMPLES_PER_CASE`` values (all of
    them when there are fewer), so the slabs of one case add up to one case's sample."""
    count = min(values.size, round(share * SAMPLES_PER_CASE))
    if count >= values.size:
        return values.astype(np.float32, copy=True)
    return values[rng.choice(values.size, count, replace=False)].astype(np.float32)


def _label_statistics(label: np.ndarray, structures: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    from scipy import ndimage

    stats = {}
    for name, values in structures.items():
        mask = _member_of(label, values)
        voxels = int(np.count_nonzero(mask))
        sizes = np.zeros(0, dtype=np.int64)
        if voxels:
            # Components within the structure's box only, and counted a slab at a time:
            # bincount widens its input to int64, which on a whole 512x512x500 CT is 1 GB.
            box = tuple(
                slice(int(hit[0]), int(hit[-1]) + 1)
                for hit in (
                    np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
                    for axis in range(mask.ndim)
                )
            )
            components, count = ndimage.label(mask[box])
            sizes = np.zeros(count + 1, dtype=np.int64)
            step = max(1, SLAB_VOXELS // max(1, components[..., :1].size))
            for start in range(0, components.shape[-1], step):
                part = components[..., start : start + step].ravel()
                sizes += np.bincount(part, minlength=count + 1)
            sizes = sizes[1:]
            del components
        stats[name] = {"voxels": voxels, "components": int(sizes.size), "sizes": sizes}
        del mask
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
    Raises ``ConfigError`` naming the file for a case whose channels do not fit the index
    or that holds NaN or infinite voxels.
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
            foreground = _member_of(label, labelled_values)
            del label
        measured = _ChannelPass(shape, foreground)
        slabs = _channel_slabs(case, len(channels))
        body_share = 1.0
        for name, channel in zip(channels, slabs, strict=True):
            image, labelled, zeros = measured.measure(channel, rng, case.image[0])
            samples[name]["image"].append(image)
            samples[name]["foreground"].append(labelled)
            zero_share[name].append(zeros)
        if index.modality == "mri":
            body_share = _body_share(
                next(iter(_channel_slabs(case, len(channels)))), samples[channels[0]]["image"][-1]
            )
        extent = measured.extent()
        geometry.append(
            CaseGeometry(
                shape=[shape[axis] for axis in order],
                spacing=[spacing[axis] for axis in order],
                orientation=orientation,
                cropped_shape=[extent[axis] for axis in order],
                crop_ratio=round(float(np.prod(extent) / np.prod(shape)), 4),
                body_share=body_share,
            )
        )
        del foreground, measured
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
