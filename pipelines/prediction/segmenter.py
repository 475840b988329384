"""One case through a model (or an ensemble): preprocess, sliding window, back to the
input's grid, post-process. Memory stays bounded: probabilities are taken back to the
input's grid a few channels at a time (``inversion_groups``) and folded into the label map as
they arrive."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from medseg.datasets.base import Case
from medseg.errors import CaseError, ConfigError
from medseg.networks import abilities, as_prunable
from medseg.pipelines.inference import WindowCount, sliding_window_predict, window_shape
from medseg.pipelines.model_dir import ModelConfig
from medseg.pipelines.prediction.backends import prepare_network
from medseg.pipelines.prediction.coarse_to_fine import CoarseToFine
from medseg.pipelines.prediction.postprocess import postprocess
from medseg.pipelines.resources import inversion_groups
from medseg.transforms.labels import probabilities
from medseg.transforms.presets import inference_transforms


def _input_voxels(image: Any) -> int | None:
    """Voxels of the input grid a preprocessed ``image`` came from (None when unrecorded)."""
    shape = image.meta.get("spatial_shape")
    return None if shape is None else int(np.prod(np.asarray(shape)))


def case_error(error: BaseException, path: Path) -> CaseError:
    """The ``CaseError`` behind ``error`` (MONAI's ``Compose`` wraps what a transform raises
    in ``RuntimeError``s), or a new one naming ``path`` with the innermost message."""
    innermost = error
    while True:
        if isinstance(innermost, CaseError):
            return innermost
        inner = innermost.__cause__ or innermost.__context__
        if inner is None:
            break
        innermost = inner
    reason = str(innermost).strip().splitlines()[-1] if str(innermost).strip() else ""
    return CaseError(f"{path}: cannot read ({reason or type(innermost).__name__})")


@dataclass
class Segmentation:
    """A case's result on its input grid.

    ``labels``: uint8 label map of disk values, the input's spatial shape in file index
    order; ``affine``: its 4x4 voxel-to-RAS affine; ``probabilities``: float16
    ``(C, *spatial)`` when asked for; ``windows`` / ``skipped``: sliding windows run and
    empty ones reused.
    """

    labels: np.ndarray
    affine: np.ndarray
    probabilities: np.ndarray | None
    windows: int
    skipped: int


class Segmenter:
    """Loaded models that segment one case at a time.

    Args:
        models: ``(config, network)`` pairs; several are an ensemble (mean of
            probabilities) and must share preprocessing and labels.
        device: where windows run.
        overlap: sliding-window overlap (None: the first model's).
        prune_level: UNet++ head to use (None: each model's own).
        tta: average over all mirrorings of the spatial axes.
        precision: CUDA autocast dtype (None: fp32).
        skip_empty: reuse one answer for all constant windows.
        backend: where windows run on the CPU (``torch``, ``onnxruntime``, ``openvino``
            or ``auto``; see ``medseg.pipelines.prediction.backends``).
        apply_postprocessing: apply the model's post-processing rules.
        coarse_to_fine: localise on a downsampled pass first (None: the model's
            ``inference.coarse_to_fine``); see ``pipelines/prediction/coarse_to_fine.py``.
    """

    def __init__(
        self,
        models: list[tuple[ModelConfig, torch.nn.Module]],
        device: torch.device,
        *,
        overlap: float | None = None,
        prune_level: int | None = None,
        tta: bool = False,
        precision: torch.dtype | None = None,
        skip_empty: bool = True,
        apply_postprocessing: bool = True,
        backend: str = "torch",
        coarse_to_fine: bool | None = None,
    ) -> None:
        from monai.transforms import Invertd

        self.config = models[0][0]
        for other, _ in models[1:]:
            if (other.preprocessing, other.scheme) != (
                self.config.preprocessing,
                self.config.scheme,
            ):
                raise ConfigError("ensembled models must share preprocessing and labels")
        if prune_level is not None:
            for config, network in models:
                if not abilities(config.network.name).prunable:
                    raise ConfigError("--prune-level applies to UNet++ models only")
                levels = as_prunable(network).levels
                if prune_level > levels:
                    raise ConfigError(
                        f"--prune-level {prune_level}: this model has levels 1..{levels}"
                    )
        self.networks = [
            prepare_network(
                config, network, device, backend, prune_level=prune_level, precision=precision
            )
            for config, network in models
        ]
        self._check_window_memory(device)
        self.scheme = self.config.scheme
        self.device = device
        self.overlap = self.config.inference.overlap if overlap is None else overlap
        self.forward_options = {} if prune_level is None else {"prune_level": prune_level}
        self.tta = tta
        self.precision = precision
        self.skip_empty = skip_empty
        self.apply_postprocessing = apply_postprocessing
        inference = self.config.inference
        self.coarse_to_fine = None
        if inference.coarse_to_fine if coarse_to_fine is None else coarse_to_fine:
            self.coarse_to_fine = CoarseToFine(
                inference.coarse_factor,
                inference.coarse_margin_mm,
                self.config.postprocessing if apply_postprocessing else None,
            )
        self.transform = inference_transforms(self.config.preprocessing)
        self.invert = Invertd("pred", self.transform, orig_keys="image", nearest_interp=False)

    def _check_window_memory(self, device: torch.device) -> None:
        """Refuse a model whose windows alone exceed the memory ``device`` has: the error
        names ``inference.roi_size``, not the first input image."""
        from medseg.pipelines.resources import device_memory

        inference, network = self.config.inference, self.config.network
        channels = network.in_channels + 2 * network.out_channels
        needed = inference.sw_batch_size * math.prod(inference.roi_size) * 4 * channels
        available = device_memory(device)
        if available is not None and needed > available:
            raise ConfigError(
                f"inference.roi_size {inference.roi_size} (sw_batch_size "
                f"{inference.sw_batch_size}): the windows alone need {needed / 2**30:.1f} GB, "
                f"{available / 2**30:.1f} GB is free; the model config is unusable here"
            )

    def check(self, case: Case) -> None:
        """Refuse, before reading any voxel, a case too large for the memory this machine has
        or whose files are unreadable, truncated or of differing shapes (``CaseError``)."""
        from medseg.datasets.headers import UnusableImageError
        from medseg.datasets.image_io import declared_shape, read_header

        first = case.image[0]
        for path in case.image:
            # Before any reader opens it: a named pipe would block the read forever.
            if path.exists() and not path.is_dir() and not path.is_file():
                raise CaseError(f"{path}: not a regular file (a pipe, socket or device)")
        declared = declared_shape(first)
        if declared is not None:
            # The header alone gives the size, before the truncation check reads the data.
            self._check_memory(first, declared)
        headers = []
        for path in case.image:
            try:
                headers.append(read_header(path))
            except UnusableImageError as error:
                raise CaseError(f"{path}: {error}") from error
        shapes = {header.shape for header in headers}
        if len(shapes) > 1:
            raise CaseError(f"{first}: channels differ in shape ({sorted(shapes)})")
        shape = headers[0].shape
        if 0 in shape:
            raise CaseError(f"{first}: has a zero-size dimension {tuple(shape)}")
        expected = self.config.preprocessing.spatial_dims
        if len(shape) != expected:
            kind = "volumes" if expected == 3 else "2D images"
            raise CaseError(
                f"{first}: a {len(shape)}D image {tuple(shape)}; this model segments {kind}"
            )
        self._check_memory(first, shape)

    def _check_memory(self, path: Path, shape: tuple[int, ...]) -> None:
        from medseg.pipelines.resources import available_memory, prediction_bytes

        network = self.config.network
        needed = prediction_bytes(shape, network.in_channels, network.out_channels)
        available = available_memory()
        if available is not None and needed > available:
            raise CaseError(
                f"{path}: {tuple(shape)} needs about {needed / 2**30:.1f} GB to segment, "
                f"{available / 2**30:.1f} GB is available; crop it or use a larger machine"
            )

    def load(self, case: Case) -> dict[str, Any]:
        """Check and preprocess ``case``; ``CaseError`` naming the file when it cannot be used."""
        self.check(case)
        source = [str(p) for p in case.image] if len(case.image) > 1 else str(case.image[0])
        try:
            data = self.transform({"image": source})
        except Exception as error:
            raise case_error(error, case.image[0]) from error
        expected = self.config.network.in_channels
        if data["image"].shape[0] != expected:
            channels = ", ".join(self.config.preprocessing.channels)
            raise CaseError(
                f"{case.image[0]}: has {data['image'].shape[0]} channel(s) after preprocessing, "
                f"the model takes {expected} ({channels})"
            )
        return data

    def _mean_probabilities(self, image: torch.Tensor, count: WindowCount) -> torch.Tensor:
        spatial = list(range(2, image.ndim))
        flips: list[tuple[int, ...]] = [()]
        if self.tta:
            flips = [c for r in range(len(spatial) + 1) for c in itertools.combinations(spatial, r)]
        total: torch.Tensor | None = None
        for network in self.networks:
            for axes in flips:
                flipped = image.flip(axes) if axes else image
                logits = sliding_window_predict(
                    network,
                    flipped,
                    roi_size=self.config.inference.roi_size,
                    overlap=self.overlap,
                    sw_batch_size=self.config.inference.sw_batch_size,
                    mode=self.config.inference.mode,
                    device=self.device,
                    precision=self.precision,
                    skip_empty=self.skip_empty,
                    count=count,
                    **self.forward_options,
                )
                chance = probabilities(logits.flip(axes) if axes else logits, self.scheme)[0]
                total = chance if total is None else total.add_(chance)
        return cast(torch.Tensor, total).div_(len(self.networks) * len(flips))

    def infer(self, data: dict[str, Any], *, keep_probabilities: bool = False) -> Segmentation:
        """Segment a case that ``load`` prepared; see ``Segmentation``."""
        from monai.data import MetaTensor

        count = WindowCount()
        image = data["image"]
        if self.coarse_to_fine is None:
            probability = self._mean_probabilities(image[None], count)
        else:
            probability, _ = self.coarse_to_fine.probabilities(
                image[None],
                lambda part: self._mean_probabilities(part, count),
                self.scheme,
                window_shape(self.config.inference.roi_size, image.ndim - 1),
                self.overlap,
                [float(mm) for mm in image.pixdim],
            )
        # Invertd needs the image's metadata and transform trace, not its voxels.
        data = {
            "image": MetaTensor(
                torch.zeros(1), meta=image.meta, applied_operations=image.applied_operations
            )
        }
        del image
        # Set by the first channel group (there is at least one).
        labels: Any = None
        best: Any = None
        affine: Any = None
        kept: list[np.ndarray] = []
        masks: dict[int, np.ndarray] = {}
        for group in inversion_groups(probability.shape[0], _input_voxels(data["image"])):
            data["pred"] = MetaTensor(probability[group.start : group.stop])
            inverted = self.invert(dict(data))["pred"]
            affine = np.asarray(inverted.affine, dtype=np.float64)
            for offset, channel in enumerate(group):
                values = inverted[offset].numpy()
                if keep_probabilities:
                    kept.append(values.astype(np.float16))
                if self.scheme.mode == "regions":
                    masks[channel] = values > 0.5
                elif best is None:
                    best = values
                    labels = np.full(values.shape, self.scheme.values[0][0], dtype=np.uint8)
                else:
                    better = values > best
                    best = np.where(better, values, best)
                    labels[better] = self.scheme.values[channel][0]
        if self.scheme.mode == "regions":
            labels = np.zeros(next(iter(masks.values())).shape, dtype=np.uint8)
            for index in self.scheme.paint_order:
                labels[masks[index]] = self.scheme.paint[index]
        if self.apply_postprocessing:
            voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
            labels = postprocess(labels, self.scheme, self.config.postprocessing, voxel_ml)
        return Segmentation(
            labels=labels,
            affine=affine,
            probabilities=np.stack(kept) if keep_probabilities else None,
            windows=count.windows,
            skipped=count.skipped,
        )

    def segment(self, case: Case) -> np.ndarray:
        """Label map (uint8, the input's spatial shape in file index order) of ``case``."""
        return self.infer(self.load(case)).labels
