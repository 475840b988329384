"""Score a folder of predicted label files against reference label files (``medseg evaluate``).

Predictions are ``<case_id>`` plus one of ``LABEL_MAP_SUFFIXES``; references come as a map
case id -> file. Every case is read (NIfTI with nibabel, other formats with SimpleITK), checked
against its reference (same shape, affines within ``AFFINE_TOLERANCE``) and scored with
``case_metrics`` in a process pool. Missing, extra, unreadable and mismatched cases are listed
as problems, in the result and in ``summary.json``, and left out of the metrics.

Files written to the output folder, each atomically: ``metrics.csv`` (one row per case and
label), ``summary.json`` (statistics per label, global Dice, the rules, the problems, the worst
cases), ``boxplot_<metric>.png`` per metric, and ``overlay_<case>.png`` for the cases of lowest
mean Dice. ``docs/evaluation.md`` describes them.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import multiprocessing
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from medseg.datasets.base import CaseProblem, LabelScheme
from medseg.datasets.image_io import LABEL_MAP_SUFFIXES, Volume, is_nifti_file, read_volume
from medseg.errors import CaseError, ConfigError
from medseg.files import read_regular_text, write_atomic, write_text_atomic
from medseg.pipelines.evaluation.lesionwise import COLUMNS as LESIONWISE_COLUMNS
from medseg.pipelines.evaluation.lesionwise import RULE as LESIONWISE_RULE
from medseg.pipelines.evaluation.lesionwise import case_lesionwise, summarize_lesionwise
from medseg.pipelines.evaluation.metrics import (
    DEFAULT_RULE,
    METRIC_AXIS_LABELS,
    ROW_FIELDS,
    SUMMARY_METRICS,
    EmptyRule,
    case_metrics,
    summarize,
)
from medseg.pipelines.planar import distance_unit, has_pixel_size, planar_columns, planar_row
from medseg.pipelines.previews import SOFT_TISSUE_WINDOW
from medseg.pipelines.structures import Structure, dataset_structures

logger = logging.getLogger(__name__)

AFFINE_TOLERANCE = 1e-4
CSV_COLUMNS = ("case", "label", *ROW_FIELDS)
SOURCES = ("reference", "prediction")
_CaseJob = tuple[str, Path, Path]
# Metric rows, lesion-wise rows, and the reason the case could not be scored.
_CaseResult = tuple[list[dict[str, Any]], list[dict[str, Any]], CaseProblem | None]


@dataclass
class EvaluationResult:
    """What ``evaluate`` found and wrote.

    ``rows``: one dict per case and label (``CSV_COLUMNS``); ``summary``: the content of
    ``summary.json``; ``problems``: every case left out, with its reason; ``paths``: name ->
    written file (``metrics_csv``, ``summary_json``, ``boxplot_<metric>``, ``overlay_<case>``).
    """

    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    problems: list[CaseProblem]
    paths: dict[str, Path]


def evaluate(
    pred_dir: Path,
    references: Mapping[str, Path],
    scheme: LabelScheme,
    output_dir: Path,
    *,
    images: Mapping[str, Path] | None = None,
    tolerance_mm: float = 1.0,
    rule: EmptyRule = DEFAULT_RULE,
    workers: int = 2,
    worst_cases: int = 3,
    show_progress: bool = True,
    modality: str | None = None,
    layout: str | None = None,
) -> EvaluationResult:
    """Score every prediction in ``pred_dir`` against ``references`` and write the report.

    ``references`` maps case id -> reference label file; ``images`` optionally maps case id ->
    an image file shown under the overlays (first channel of a 4D file). Metrics follow
    ``case_metrics`` with ``tolerance_mm`` (NSD) and ``rule`` (empty masks); ``workers``
    processes score cases in parallel (1: in this process; the pool starts them with
    forkserver, so a script calling this needs the ``if __name__ == "__main__":`` guard); the
    ``worst_cases`` cases of lowest mean Dice get an overlay (``previews.draw_preview``; CT,
    per ``modality``, in a soft-tissue window; names and colours from ``layout``'s label
    table); ``show_progress`` draws a bar in a terminal (plain logs get a line per case
    anyway). Raises ``ConfigError`` for
    unusable arguments; problems with single cases do not raise but are returned (and logged
    as warnings).
    """
    pred_dir, output_dir = Path(pred_dir), Path(output_dir)
    if not pred_dir.is_dir():
        raise ConfigError(f"{pred_dir}: prediction folder not found")
    if workers < 1 or worst_cases < 0 or not tolerance_mm >= 0:
        raise ConfigError(
            f"need workers >= 1, worst_cases >= 0, tolerance_mm >= 0; got {workers}, "
            f"{worst_cases}, {tolerance_mm}"
        )
    # The report's files (metrics.csv, summary.json, plots) may not land among the files
    # it reads; a new folder below them is harmless (PRED_DIR/evaluation is the default).
    read = {pred_dir.resolve()} | {Path(path).parent.resolve() for path in references.values()}
    read |= {Path(path).parent.resolve() for path in (images or {}).values()}
    if output_dir.resolve() in read:
        raise ConfigError(
            f"{output_dir}: holds predictions, references or images that the report would "
            "sit among; choose another --output (default: PRED_DIR/evaluation)"
        )
    predictions, problems = _pair_cases(pred_dir, references)
    score = partial(_score_case, scheme=scheme, tolerance_mm=tolerance_mm, rule=rule)
    jobs = [(c, predictions[c], Path(references[c])) for c in sorted(predictions)]
    rows: list[dict[str, Any]] = []
    lesion_rows: list[dict[str, Any]] = []
    for case_rows, case_lesion_rows, problem in _map_cases(score, jobs, workers, show_progress):
        rows.extend(case_rows)
        lesion_rows.extend(case_lesion_rows)
        if problem is not None:
            problems.append(problem)
    for problem in problems:
        logger.warning("left out of the evaluation: %s", problem)

    worst = _worst_cases(rows, worst_cases)
    metrics = planar_columns(SUMMARY_METRICS, rows)
    summary = {
        "cases": {
            "references": len(references),
            "predictions": len(predictions),
            "evaluated": len({row["case"] for row in rows}),
        },
        "rules": {**rule.describe(), "tolerance_mm": tolerance_mm, **distance_unit(rows)},
        "labels": summarize(rows, list(scheme.foreground), metrics),
        "lesionwise": {
            "rule": LESIONWISE_RULE,
            "labels": summarize_lesionwise(lesion_rows, list(scheme.foreground)),
        },
        "worst_cases": [{"case": case_id, "mean_dice": dice} for case_id, dice in worst],
        "problems": [
            {"case": p.case_id, "path": str(p.path), "reason": p.reason} for p in problems
        ],
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "metrics_csv": write_text_atomic(
            output_dir / "metrics.csv", _csv_text(rows, planar_columns(CSV_COLUMNS, rows))
        ),
        "lesionwise_csv": write_text_atomic(
            output_dir / "lesionwise.csv", _csv_text(lesion_rows, LESIONWISE_COLUMNS)
        ),
        "summary_json": write_text_atomic(
            output_dir / "summary.json", json.dumps(summary, indent=2, allow_nan=False) + "\n"
        ),
    }
    for metric in metrics:
        target = output_dir / f"boxplot_{metric}.png"
        paths[f"boxplot_{metric}"] = _boxplot(rows, list(scheme.foreground), metric, target)
    for case_id, dice in worst:
        image = None if images is None else images.get(case_id)
        target = output_dir / f"overlay_{case_id}.png"
        paths[f"overlay_{case_id}"] = _overlay(
            case_id,
            dice,
            predictions[case_id],
            Path(references[case_id]),
            image,
            dataset_structures(scheme, layout),
            target,
            SOFT_TISSUE_WINDOW if modality == "ct" else None,
        )
    return EvaluationResult(rows, summary, problems, paths)


def track_evaluation(
    result: EvaluationResult,
    run_name: str | None = None,
    experiment: str = "medseg-evaluate",
    *,
    model: str | None = None,
    predictions: Path | None = None,
    references: Path | None = None,
) -> str | None:
    """Log an evaluation to MLflow and return the run id (None when tracking failed).

    Opens a run (nested inside an active one, such as training's) and logs the rules as
    params, ``eval/<metric>/<label>`` means, ``eval/global_dice/<label>``,
    ``eval/lesionwise_dice/<label>`` and ``eval/lesionwise_hd95/<label>``,
    ``eval/dice_mean`` (mean over labels) and ``eval/problems``, and every written file as
    an artifact. ``model`` (default: the one ``predictions/predict_report.json`` names)
    links the run: when its training run is known (``tracking.training_run_id``), the run
    goes into that run's experiment as its child (tagged ``medseg.training_run_id``), else
    into ``experiment``. ``model``, ``predictions`` and ``references`` are recorded as tags.
    """
    from medseg.pipelines.tracking import TRAINING_RUN_TAG, Tracker, training_run_id

    if model is None and predictions is not None:
        model = _predicting_model(Path(predictions))

    metrics: dict[str, float] = {"eval/problems": float(len(result.problems))}
    label_dice = []
    for label, entry in result.summary["labels"].items():
        key = _metric_key(label)
        metrics[f"eval/global_dice/{key}"] = entry["global_dice"]
        for metric in SUMMARY_METRICS:
            if metric in entry and entry[metric]["mean"] is not None:
                metrics[f"eval/{metric}/{key}"] = entry[metric]["mean"]
        if entry["dice"]["mean"] is not None:
            label_dice.append(entry["dice"]["mean"])
    for label, entry in result.summary["lesionwise"]["labels"].items():
        key = _metric_key(label)
        for metric in ("dice", "hd95"):
            if entry[metric] is not None:
                metrics[f"eval/lesionwise_{metric}/{key}"] = entry[metric]
    if label_dice:
        metrics["eval/dice_mean"] = float(np.mean(label_dice))
    params = {f"eval.{key}": value for key, value in result.summary["rules"].items()}
    tags = {"medseg.model": model} if model else {}
    for name, folder in (("predictions", predictions), ("references", references)):
        if folder is not None:
            tags[f"medseg.{name}"] = str(Path(folder).resolve())
    trained_by = training_run_id(model) if model else None
    experiment_id = _experiment_of(trained_by) if trained_by else None
    if experiment_id is not None:
        tags |= {TRAINING_RUN_TAG: str(trained_by), "mlflow.parentRunId": str(trained_by)}
    if run_name is None and predictions is not None:
        run_name = f"evaluate {Path(predictions).name}"
    with Tracker(experiment=experiment, run_name=run_name, experiment_id=experiment_id) as tracker:
        tracker.set_tags(tags)
        tracker.log_params(params)
        tracker.log_metrics(metrics, step=0)
        for path in result.paths.values():
            tracker.log_artifact(path, "evaluation")
    return tracker.run_id


def _predicting_model(predictions: Path) -> str | None:
    """The model ``medseg predict`` recorded in ``predict_report.json`` of ``predictions``."""
    try:
        report = json.loads(read_regular_text(predictions / "predict_report.json"))
        model = report["model"]
    # No report, a pipe under its name, or not predict's.
    except (OSError, ConfigError, ValueError, KeyError, TypeError):
        return None
    return model if isinstance(model, str) else None


def _experiment_of(run_id: str) -> str | None:
    """The experiment id of MLflow run ``run_id``; None when it cannot be found."""
    from medseg.pipelines.tracking import limit_http_retries

    limit_http_retries()
    try:
        import mlflow

        return str(mlflow.MlflowClient().get_run(run_id).info.experiment_id)
    except Exception:  # a run of another tracking store, or none reachable: no link
        return None


def _metric_key(label: str) -> str:
    """``label`` with the characters MLflow refuses in metric names replaced by ``_``."""
    return re.sub(r"[^\w\-. /]", "_", label)


def _pair_cases(
    pred_dir: Path, references: Mapping[str, Path]
) -> tuple[dict[str, Path], list[CaseProblem]]:
    """Predictions matched to references by case id, and the missing, extra and duplicate ones."""
    found: dict[str, list[Path]] = {}
    for path in sorted(pred_dir.iterdir()):
        suffix = next((s for s in LABEL_MAP_SUFFIXES if path.name.endswith(s)), None)
        # Dot files are atomic writers' temporaries (``medseg.files``), not predictions.
        if suffix is not None and path.is_file() and not path.name.startswith("."):
            found.setdefault(path.name[: -len(suffix)], []).append(path)
    predictions: dict[str, Path] = {}
    problems: list[CaseProblem] = []
    for case_id, paths in found.items():
        if case_id not in references:
            problems += [CaseProblem(case_id, p, "extra prediction: no reference") for p in paths]
        elif len(paths) > 1:
            names = ", ".join(p.name for p in paths)
            problems.append(
                CaseProblem(case_id, pred_dir, f"several predictions ({names}); keep one")
            )
        else:
            predictions[case_id] = paths[0]
    for case_id in sorted(set(references) - set(found)):
        expected = pred_dir / f"{case_id}{LABEL_MAP_SUFFIXES[0]}"
        problems.append(CaseProblem(case_id, expected, "missing prediction"))
    return predictions, problems


def _map_cases(
    score: Callable[[_CaseJob], _CaseResult],
    jobs: Sequence[_CaseJob],
    workers: int,
    show_progress: bool = False,
) -> list[_CaseResult]:
    from medseg.pipelines.console import settings, worker_initializer
    from medseg.pipelines.progress import task_progress

    results: list[_CaseResult] = []
    with task_progress("scoring", len(jobs), show_progress) as advance:
        if workers == 1 or len(jobs) <= 1:
            for job in jobs:
                results.append(score(job))
                advance(_outcome(job[0], results[-1]))
            return results
        # Not fork: evaluate also runs inside training, whose torch and MLflow threads a
        # forked child would inherit in whatever state they were. A started child has
        # Python's default warning filters: the initializer gives it this console's.
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        with ProcessPoolExecutor(
            min(workers, len(jobs)),
            mp_context=context,
            initializer=worker_initializer,
            initargs=(settings(),),
        ) as pool:
            for job, result in zip(jobs, pool.map(score, jobs), strict=True):
                results.append(result)
                advance(_outcome(job[0], result))
    return results


def _outcome(case_id: str, result: _CaseResult) -> str:
    """``case_id`` and its mean Dice, or that it was left out."""
    rows, _, problem = result
    if problem is not None or not rows:
        return f"{case_id} left out"
    return f"{case_id} mean Dice {np.mean([float(row['dice']) for row in rows]):.3f}"


def _score_case(
    job: _CaseJob, *, scheme: LabelScheme, tolerance_mm: float, rule: EmptyRule
) -> _CaseResult:
    """Rows of one case (id, prediction file, reference file), or no rows and the reason it
    cannot be scored."""
    case_id, prediction_path, reference_path = job
    volumes = []
    for path in (prediction_path, reference_path):
        try:
            _require_scoring_memory(path)
            volumes.append(_read_labels(path))
        except Exception as error:  # a bad file fails its case, not the batch
            return [], [], CaseProblem(case_id, path, f"unreadable: {error}")
    prediction, reference = volumes
    for path, volume in ((prediction_path, prediction), (reference_path, reference)):
        outside = sorted(set(np.unique(volume.array).tolist()) - scheme.allowed_values)
        if outside:
            shown = ", ".join(map(str, outside[:5])) + (" ..." if len(outside) > 5 else "")
            allowed = ", ".join(map(str, sorted(scheme.allowed_values)))
            reason = f"label values {shown} are outside the label set ({allowed})"
            return [], [], CaseProblem(case_id, path, reason)
    if prediction.array.shape != reference.array.shape:
        reason = f"shape {prediction.array.shape} differs from the reference's"
        return [], [], CaseProblem(case_id, prediction_path, f"{reason} {reference.array.shape}")
    deviation = float(np.max(np.abs(prediction.affine - reference.affine)))
    # A PNG mask has no geometry of its own: it lies on its picture's grid.
    if deviation > AFFINE_TOLERANCE and not prediction_path.name.endswith(".png"):
        reason = (
            f"affine differs from the reference's by up to {deviation:.4g} (tolerance "
            f"{AFFINE_TOLERANCE}); resample the prediction onto the reference grid"
        )
        return [], [], CaseProblem(case_id, prediction_path, reason)
    rows = case_metrics(
        prediction.array,
        reference.array,
        reference.spacing,
        scheme,
        tolerance_mm=tolerance_mm,
        rule=rule,
    )
    if reference.array.ndim == 2:
        rows = [planar_row(row, has_pixel_size(reference_path)) for row in rows]
    lesions = case_lesionwise(
        prediction.array, reference.array, reference.spacing, scheme.foreground
    )
    logger.debug("scored %s", case_id)
    return (
        [{"case": case_id, **row} for row in rows],
        [{"case": case_id, **row} for row in lesions],
        None,
    )


# Peak memory of scoring one case per voxel, beyond the two label arrays: measured 11.6 B
# for two classes on 160^3 (masks, distance transforms); doubled for more labels.
SCORING_BYTES_PER_VOXEL = 24


def _require_scoring_memory(path: Path) -> None:
    """Refuse (``CaseError``) a NIfTI label file whose header declares more voxels than
    this machine can score, before any voxel is read: a small crafted ``.nii.gz`` could
    otherwise inflate to any size."""
    from medseg.pipelines.resources import available_memory

    if not is_nifti_file(path) or not path.is_file():
        return
    import nibabel

    header = nibabel.load(path).header
    voxels = math.prod(header.get_data_shape())
    needed = voxels * (SCORING_BYTES_PER_VOXEL + 2 * header.get_data_dtype().itemsize)
    available = available_memory()
    if available is not None and needed > available:
        raise CaseError(
            f"{path}: {tuple(header.get_data_shape())} needs about {needed / 2**30:.1f} GB "
            f"to score, {available / 2**30:.1f} GB is available"
        )


def _read_labels(path: Path) -> Volume:
    """A label file as integers; raises ``CaseError`` when it holds fractional values."""
    volume = read_volume(path)
    array = volume.array
    if not np.issubdtype(array.dtype, np.integer):
        rounded = np.rint(array)
        if not np.array_equal(rounded, array):
            raise CaseError(f"{path}: label values are not whole numbers")
        array = rounded.astype(np.int32)
    return Volume(array, volume.spacing, volume.affine)


def _worst_cases(rows: Sequence[Mapping[str, Any]], count: int) -> list[tuple[str, float]]:
    """The ``count`` cases of lowest mean Dice over their labels, lowest first."""
    per_case: dict[str, list[float]] = {}
    for row in rows:
        per_case.setdefault(row["case"], []).append(float(row["dice"]))
    means = sorted((float(np.mean(dice)), case_id) for case_id, dice in per_case.items())
    return [(case_id, dice) for dice, case_id in means[:count]]


def _csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _boxplot(
    rows: Sequence[Mapping[str, Any]], labels: list[str], metric: str, target: Path
) -> Path:
    """One box per label of ``metric`` over the cases (NaN rows left out and counted)."""
    from matplotlib.figure import Figure

    data, names = [], []
    for label in labels:
        values = [float(row[metric]) for row in rows if row["label"] == label]
        finite = [value for value in values if not math.isnan(value)]
        data.append(finite)
        skipped = len(values) - len(finite)
        names.append(f"{label}\n({skipped} NaN)" if skipped else label)
    figure = Figure(figsize=(2 + 1.2 * len(labels), 4), layout="constrained")
    axes = figure.add_subplot()
    axes.boxplot(data)
    axes.set_xticks(range(1, len(labels) + 1), names)
    axes.set_ylabel(METRIC_AXIS_LABELS[metric])
    axes.set_title(f"{METRIC_AXIS_LABELS[metric]} per case")
    return write_atomic(target, lambda path: figure.savefig(path, format="png", dpi=100))


def _overlay(
    case_id: str,
    mean_dice: float,
    prediction_path: Path,
    reference_path: Path,
    image_path: Path | None,
    structures: list[Structure],
    target: Path,
    window: tuple[float, float] | None,
) -> Path:
    """The reference's (top row) and the prediction's (bottom row) outlines on the image
    (``previews.draw_preview``), through the centre of the reference's largest structure
    (the prediction's when the reference is empty)."""
    from medseg.pipelines.previews import draw_preview
    from medseg.pipelines.statistics import label_statistics, largest_structure_centre

    reference = _read_labels(reference_path)
    prediction = _read_labels(prediction_path).array
    centre = largest_structure_centre(label_statistics(reference.array, structures, None))
    if centre is None:
        centre = largest_structure_centre(label_statistics(prediction, structures, None))
    image = None
    if image_path is not None:
        try:
            image = read_volume(Path(image_path)).array
        except Exception as error:  # the image only decorates the overlay
            logger.warning("%s: overlay drawn without its image (%s)", case_id, error)
        if image is not None and image.shape[: reference.array.ndim] != reference.array.shape:
            logger.warning("%s: image shape %s differs from the reference's", case_id, image.shape)
            image = None
    return draw_preview(
        target,
        image,
        reference.affine,
        [("reference", reference.array), ("prediction", prediction)],
        structures,
        centre=centre,
        window=window,
        title=f"{case_id}: mean Dice {mean_dice:.3f}",
    )
