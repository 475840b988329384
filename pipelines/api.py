"""The Python API behind ``medseg.load_model``, ``medseg.train`` and ``medseg.evaluate``.

``Model`` holds loaded networks in the ``Segmenter`` that ``medseg predict`` runs, so an
image segmented here gets the labels ``medseg predict`` writes for the same file.
In-memory images (nibabel, SimpleITK, numpy) are staged as uncompressed NIfTI files in a
private temporary folder, removed as soon as the case is read: the one reader, and its
checks, serve files and objects alike. ``segment_many`` reads the next image while the
current one runs, as ``medseg predict`` does.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np

from medseg.datasets.base import Case
from medseg.errors import CaseError, ConfigError

STAGED_NAME = "channel_{}.nii"


@dataclass
class _Staged:
    """An image read and preprocessed, and how to turn its label map into the caller's kind."""

    data: dict[str, Any]
    restore: Callable[[np.ndarray, np.ndarray], Any]


class Model:
    """A loaded model (or ensemble), ready to segment many images without reloading.

    Made by ``medseg.load_model``. ``config`` is the (first) model's ``ModelConfig``;
    ``label_names`` names the network's output channels, in the order of the
    probabilities ``segment`` returns.
    """

    def __init__(self, segmenter: Any) -> None:
        self.segmenter = segmenter
        self.config = segmenter.config
        self.label_names: list[str] = list(segmenter.scheme.names)

    def segment(
        self,
        image: Any,
        *,
        affine: Any = None,
        spacing: Any = None,
        probabilities: bool = False,
    ) -> Any:
        """Segment one image onto its own grid.

        ``image`` is a nibabel image, a SimpleITK image, a path (NIfTI, MetaImage, NRRD,
        DICOM folder ...), or a numpy array with its 4x4 voxel-to-RAS ``affine`` (mm) or
        its voxel ``spacing`` (mm, axes aligned with RAS); a multi-channel model takes a
        list of such images (one per channel, in ``config.preprocessing.channels`` order)
        or a channel-first array. Returns the label map (uint8, the dataset's label values)
        as the same kind of object: a nibabel image with the input's header geometry, a
        SimpleITK image with its origin, spacing and direction, a numpy array of the
        input's spatial shape; for a path, a nibabel image. With ``probabilities`` returns
        ``(labels, probabilities)``, the latter float16 ``(C, *spatial)`` in
        ``label_names`` order. Raises ``CaseError`` for an unusable image.
        """
        staged = self._stage(image, affine, spacing)
        return self._finish(staged, probabilities)

    def segment_many(self, images: Iterable[Any], *, probabilities: bool = False) -> Iterator[Any]:
        """Segment each of ``images`` in order, reading the next while the current runs.

        Each item is what ``segment`` takes, or a mapping ``{"image": ..., "affine": ...}``
        (or ``"spacing"``) for numpy arrays; yields what ``segment`` returns for each. An
        unusable image raises ``CaseError`` at its turn, after the ones before it.
        """
        items = iter(images)
        with ThreadPoolExecutor(1) as reader:

            def read_next() -> Any:
                item = next(items, _END)
                if item is _END:
                    return None
                if isinstance(item, Mapping):
                    image, affine, spacing = item["image"], item.get("affine"), item.get("spacing")
                    return reader.submit(self._stage, image, affine, spacing)
                return reader.submit(self._stage, item, None, None)

            upcoming = read_next()
            while upcoming is not None:
                staged = upcoming.result()
                upcoming = read_next()
                yield self._finish(staged, probabilities)

    def _finish(self, staged: _Staged, probabilities: bool) -> Any:
        result = self.segmenter.infer(staged.data, keep_probabilities=probabilities)
        labels = staged.restore(result.labels, result.affine)
        return (labels, result.probabilities) if probabilities else labels

    def _stage(self, image: Any, affine: Any, spacing: Any) -> _Staged:
        """Read and preprocess ``image`` (see ``segment``), staging in-memory images as
        files in a private folder removed before returning."""
        folder = Path(tempfile.mkdtemp(prefix="medseg-api-"))
        try:
            paths, restore = _stage_files(
                image, affine, spacing, folder, self.config.preprocessing.spatial_dims
            )
            try:
                data = self.segmenter.load(Case("image", tuple(paths)))
            except CaseError as error:
                raise CaseError(_name_staged(str(error), paths, folder)) from None
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return _Staged(data, restore)


def _name_staged(message: str, paths: list[Path], folder: Path) -> str:
    """``message`` with the staged files' temporary names replaced by what the caller gave
    (the in-memory image, or its channel k), which is what the caller can fix."""
    for index, path in enumerate(paths):
        if path.parent == folder:
            given = "the given image" if len(paths) == 1 else f"the given image's channel {index}"
            message = message.replace(str(path), given)
    return message


_END = object()


def _stage_files(
    image: Any, affine: Any, spacing: Any, folder: Path, spatial_dims: int
) -> tuple[list[Path], Callable[[np.ndarray, np.ndarray], Any]]:
    """The files that hold ``image``'s channels, and the function that gives a label map
    ``(labels, affine)`` back as ``image``'s kind."""
    if isinstance(image, np.ndarray):
        return _stage_array(image, affine, spacing, folder, spatial_dims)
    channels = list(image) if isinstance(image, list | tuple) else [image]
    if not channels:
        raise ConfigError("segment: no image given")
    first = channels[0]
    if isinstance(first, str | Path):
        return [Path(channel) for channel in channels], _path_restorer(Path(first))
    kind = _kind(first)
    paths = []
    for index, channel in enumerate(channels):
        if _kind(channel) != kind:
            raise ConfigError("segment: give every channel as the same kind of image")
        path = folder / STAGED_NAME.format(index)
        _save(channel, path, kind)
        paths.append(path)
    if kind == "nibabel":
        return paths, lambda labels, _: _nifti_label_image(first, labels)
    return paths, lambda labels, _: _sitk_label_image(first, labels)


def _nifti_label_image(source: Any, labels: np.ndarray) -> Any:
    """The label map as ``medseg predict`` writes it beside ``source`` and nibabel reads it
    back (its ``affine`` from the header), without touching the disk."""
    from medseg.datasets.image_io import nifti_label_image

    image = nifti_label_image(source, labels)
    return type(image).from_bytes(image.to_bytes())


def _kind(image: Any) -> str:
    import SimpleITK as sitk
    from nibabel.spatialimages import SpatialImage

    if isinstance(image, SpatialImage):
        return "nibabel"
    if isinstance(image, sitk.Image):
        return "simpleitk"
    raise ConfigError(
        f"segment: cannot segment a {type(image).__name__}; give a nibabel or SimpleITK "
        "image, a path, or a numpy array with affine= or spacing="
    )


def _save(image: Any, path: Path, kind: str) -> None:
    if kind == "nibabel":
        import nibabel as nib

        nib.save(image, path)
    else:
        import SimpleITK as sitk

        sitk.WriteImage(image, str(path))


def _sitk_label_image(source: Any, labels: np.ndarray) -> Any:
    import SimpleITK as sitk

    # SimpleITK arrays are indexed (z, y, x): the reverse of the file's index order.
    reversed_axes = labels.transpose(*reversed(range(labels.ndim)))
    image = sitk.GetImageFromArray(np.ascontiguousarray(reversed_axes))
    image.CopyInformation(source)
    return image


def _path_restorer(reference: Path) -> Callable[[np.ndarray, np.ndarray], Any]:
    import nibabel as nib

    if reference.name.lower().endswith((".nii", ".nii.gz")):
        return lambda labels, _: _nifti_label_image(nib.load(reference), labels)

    def restore(labels: np.ndarray, affine: np.ndarray) -> Any:
        image = nib.Nifti1Image(labels, affine)
        image.set_qform(affine, code=1)
        image.set_sform(affine, code=1)
        return image

    return restore


def _stage_array(
    array: np.ndarray, affine: Any, spacing: Any, folder: Path, spatial_dims: int
) -> tuple[list[Path], Callable[[np.ndarray, np.ndarray], Any]]:
    import nibabel as nib

    if (affine is None) == (spacing is None):
        raise ConfigError("segment: give a numpy array with exactly one of affine= or spacing=")
    if affine is None:
        sizes = [float(size) for size in np.atleast_1d(spacing)]
        if len(sizes) != spatial_dims:
            raise ConfigError(f"segment: spacing needs {spatial_dims} sizes in mm, got {sizes}")
        affine = np.diag([*sizes, *[1.0] * (4 - len(sizes))])
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ConfigError(f"segment: affine must be 4x4, got shape {affine.shape}")
    if array.ndim not in (spatial_dims, spatial_dims + 1):
        raise ConfigError(
            f"segment: a {array.ndim}D array; this model takes {spatial_dims}D images or "
            f"channel-first {spatial_dims + 1}D arrays"
        )
    channels = [array] if array.ndim == spatial_dims else list(array)
    paths = []
    for index, channel in enumerate(channels):
        path = folder / STAGED_NAME.format(index)
        nib.save(nib.Nifti1Image(np.asarray(channel), affine), path)
        paths.append(path)
    return paths, lambda labels, _: labels


def load_model(
    path_or_uri: str | Path,
    device: str = "auto",
    *,
    overlap: float | None = None,
    tta: bool = False,
    prune_level: int | None = None,
    precision: str = "auto",
) -> Model:
    """Load a model once for many ``segment`` calls.

    ``path_or_uri`` is a model directory, a run directory, a package (``.medseg.zip``), a
    checkpoint, an MLflow URI (``runs:/ID/model``, ``models:/NAME/VERSION``), several of
    them comma-separated or a cross-validation folder (an ensemble). ``device`` is
    ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; the other options are ``medseg predict``'s.
    Raises ``ConfigError`` for an unusable model or option.
    """
    from medseg.pipelines.inference import resolve_device, resolve_precision
    from medseg.pipelines.prediction.predict import open_models
    from medseg.pipelines.prediction.segmenter import Segmenter

    target = resolve_device(device)
    models = open_models(str(path_or_uri))
    segmenter = Segmenter(
        models,
        target,
        overlap=overlap,
        prune_level=prune_level,
        tta=tta,
        precision=resolve_precision(precision, target, [config for config, _ in models]),
    )
    return Model(segmenter)


def train(config_or_path: Any, overrides: list[str] | None = None, *, resume: bool = False) -> Any:
    """Train as ``medseg train`` does and return its ``TrainResult`` (``model_dir``,
    ``best_metric``, ``history`` ...).

    ``config_or_path`` is a YAML file, a config mapping, or a ``medseg.config.Config``;
    ``overrides`` are ``--set`` strings (``["train.epochs=3"]``). Raises ``ConfigError``.
    """
    from medseg.config import Config, load_config, parse_config
    from medseg.pipelines.bf16_agreement import after_training as bf16_agreement
    from medseg.pipelines.pruning.prune import after_training as pruning
    from medseg.pipelines.training.train import train as run_training

    if isinstance(config_or_path, Config):
        settings = parse_config(config_or_path.model_dump(mode="json"), "config", overrides)
    elif isinstance(config_or_path, Mapping):
        settings = parse_config(dict(config_or_path), "config", overrides)
    else:
        settings = load_config(config_or_path, overrides)
    after = [bf16_agreement, *([pruning] if settings.train.prune else [])]
    return run_training(settings, resume=resume, show_progress=False, after=after)


def evaluate_folders(
    pred: str | Path,
    ref: str | Path,
    *,
    output: str | Path | None = None,
    layout: str | None = None,
    labels: str | None = None,
    tolerance_mm: float = 1.0,
    one_empty: str = "diagonal",
    workers: int = 1,
) -> Any:
    """``medseg evaluate PRED REF``: score the label maps in ``pred`` against the dataset or
    label folder ``ref`` and write the report to ``output`` (default ``pred/evaluation``).
    Returns the ``EvaluationResult``."""
    from medseg.files import require_outside
    from medseg.pipelines.evaluation.evaluate import evaluate
    from medseg.pipelines.evaluation.metrics import EmptyRule
    from medseg.pipelines.evaluation.references import find_references

    # EmptyRule refuses any other value with a ConfigError.
    rule = EmptyRule(one_empty_distance=cast(Literal["diagonal", "nan"], one_empty))
    if output is not None:
        require_outside(output, [ref], "--output")
    references = find_references(Path(ref), layout=layout, labels=labels)
    return evaluate(
        Path(pred),
        references.labels,
        references.scheme,
        Path(output) if output is not None else Path(pred) / "evaluation",
        images=references.images,
        modality=references.modality,
        layout=references.layout,
        tolerance_mm=tolerance_mm,
        rule=rule,
        workers=workers,
    )


def evaluate_records(pred: str | Path, ref: str | Path, **options: Any) -> list[dict[str, Any]]:
    """The metrics table of ``evaluate_folders`` as plain records: one dict per case and
    label (``case``, ``label``, ``dice``, ``iou``, ``hd95``, ``assd``, ``nsd`` ...)."""
    return list(evaluate_folders(pred, ref, **options).rows)
