"""``medseg prune``: choose a UNet++ pruning level from measured accuracy and speed.

UNet++ (Zhou et al., TMI 2019, Section III-C) can answer from head L alone, computing only
the nodes X(i, j) with i + j <= L. This module measures every level on labelled cases in
one process and on one device: Dice per structure, seconds per case, parameters and FLOPs;
it picks the smallest level whose mean Dice is within a tolerance of the deepest level
measured, and writes a model directory holding only that level's nodes.

Dice is measured as training's validation measures it (``pipelines/validation.py``): on
the preprocessed volume, in the network's output space, against the preprocessed target.
The full predict path (inversion to the input grid, painting labels, ``case_metrics``)
would add the same level-independent steps to every level and resample both masks; the
choice between levels depends only on the network's output, and this way it is the same
number the training run selected its checkpoint on. All levels' Dice come from one sliding
pass per case (``prune_sampling.py``). Time per case is the network's forward over the
windows a prediction of the case computes, the only cost that depends on the level: each
level is timed per window on a fixed sample of windows drawn from the cases, so the timing
costs the same however many and however large the cases are.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from medseg.datasets.base import Case
from medseg.errors import ConfigError
from medseg.networks import abilities, as_prunable
from medseg.networks.inference_layout import inference_network
from medseg.networks.unetpp import UNetPlusPlus
from medseg.pipelines.inference import (
    PRECISIONS,
    WindowCount,
    resolve_device,
    resolve_precision,
    window_shape,
)
from medseg.pipelines.model_dir import ModelConfig, build_from_config, open_model, save_model_dir
from medseg.pipelines.pruning.prune_report import (
    LevelMeasurement,
    PruneResult,
    plot_pruning,
    track_pruning,
    write_table,
)
from medseg.pipelines.pruning.prune_sampling import (
    level_logits,
    sample_windows,
    seconds_per_window,
    windows_per_case,
)
from medseg.pipelines.tracking import Tracker
from medseg.pipelines.validation import dice_rows, summarise
from medseg.transforms.presets import validation_transforms

if TYPE_CHECKING:
    from medseg.pipelines.training.train import FinishedTraining

logger = logging.getLogger(__name__)

# Windows each level is timed on: enough for a stable median, few enough that the timing
# costs less than one sliding pass over a few full-size volumes.
SAMPLE_WINDOWS = 8
TABLE_FILE = "pruning.csv"
PLOT_FILE = "pruning.png"
MODEL_FOLDER = "model"


def parse_levels(text: str) -> list[int]:
    """``"1,2,3,4"`` -> ``[1, 2, 3, 4]`` (the CLI's ``--levels``); ``ConfigError`` otherwise."""
    parts = [part.strip() for part in text.split(",")]
    if not parts or not all(part.isdigit() and int(part) >= 1 for part in parts):
        raise ConfigError(
            f"--levels {text!r}: expected levels >= 1 separated by commas, e.g. 1,2,3"
        )
    return sorted({int(part) for part in parts})


def choose_level(dice_means: dict[int, float], tolerance: float) -> int:
    """The smallest level whose mean Dice is at least the deepest level's minus ``tolerance``.

    ``dice_means`` maps level -> mean Dice (0..1); ``tolerance`` is in Dice units (0.01 = one
    point, >= 0). Returns a level, the deepest one at worst.
    """
    reference = dice_means[max(dice_means)]
    return min(level for level, dice in dice_means.items() if dice >= reference - tolerance)


def window_flops(config: ModelConfig, level: int) -> int:
    """FLOPs (2 per multiply-add) of one forward of the network ``config`` describes at ``level``
    over one window ``(1, C_in, *roi_size)``, as ``torch.utils.flop_counter.FlopCounterMode``
    counts them (convolutions and matrix products; norms and activations are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    # Counted on the meta device: the count follows from the shapes alone, and a real
    # forward of a full-size window per level would cost as much as timing it.
    with torch.device("meta"):
        shadow = build_from_config(config).eval()
        window = torch.zeros(1, config.network.in_channels, *config.inference.roi_size)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        shadow(window, prune_level=level)
    return int(counter.get_total_flops())


def _checked_levels(
    config: ModelConfig, network: torch.nn.Module, model: str, levels: Sequence[int] | None
) -> list[int]:
    """``levels`` sorted (default: every level the network has), once the network is known to
    be a UNet++ that has them all."""
    if not abilities(config.network.name).prunable:
        raise ConfigError(
            f"{model}: pruning needs a UNet++ model, this one is {config.network.name!r}"
        )
    prunable = as_prunable(network)
    built = prunable.levels
    levels = sorted(set(levels)) if levels else list(range(1, built + 1))
    unusable = [level for level in levels if not 1 <= level <= built]
    if unusable:
        pruned = f", already pruned to level {built}" if built < prunable.depth else ""
        raise ConfigError(
            f"{model}: cannot measure level(s) {unusable}: the model has levels 1..{built}"
            f"{pruned}; choose --levels within 1..{built}"
        )
    return levels


def _measure_case(
    network: UNetPlusPlus,
    config: ModelConfig,
    case: Case,
    levels: list[int],
    device: torch.device,
    precision: torch.dtype | None,
) -> tuple[dict[int, dict[str, Any]], int, torch.Tensor]:
    """One case: its Dice row per level (one sliding pass gives every level), the number of
    windows a prediction of it computes (constant ones reused), and its preprocessed image
    ``(C, *spatial)`` for the timing sample."""
    scheme = config.scheme
    data = validation_transforms(config.preprocessing, scheme)(case.as_dict())
    image = data["image"][None]
    count = WindowCount()
    logits = level_logits(network, image, levels, config.inference, device, precision, count)
    labels = data["label"][None]
    rows = {level: dice_rows(logits[level], labels, [case.id], scheme)[0] for level in levels}
    return rows, count.windows - count.skipped, image[0]


@dataclass(frozen=True)
class _Settings:
    tolerance: float
    levels: Sequence[int] | None
    repeats: int
    device: str
    precision: str
    show_progress: bool
    windows: int = SAMPLE_WINDOWS


def prune_cases(
    model: str | Path,
    cases: Sequence[Case],
    output_dir: Path,
    *,
    tolerance: float = 0.01,
    levels: Sequence[int] | None = None,
    repeats: int = 3,
    device: str = "auto",
    precision: str = "auto",
    show_progress: bool = False,
    windows: int = SAMPLE_WINDOWS,
) -> PruneResult:
    """Measure, choose and write as ``prune`` does, on given labelled ``cases`` in the model's
    label scheme (a training run's validation cases, say). Raises ``ConfigError`` as ``prune``
    does, and for no cases or a case without a label."""
    config, network = open_model(model)
    settings = _Settings(tolerance, levels, repeats, device, precision, show_progress, windows)
    return _prune(str(model), config, network, cases, Path(output_dir), settings)


def prune(
    model: str | Path,
    data: Path,
    output_dir: Path,
    *,
    tolerance: float = 0.01,
    levels: Sequence[int] | None = None,
    repeats: int = 3,
    device: str = "auto",
    precision: str = "auto",
    layout: str | None = None,
    show_progress: bool = False,
    windows: int = SAMPLE_WINDOWS,
) -> PruneResult:
    """Measure a trained UNet++ at each pruning level on the labelled cases in ``data``,
    choose a level and write ``pruning.csv``, ``pruning.png`` and the pruned ``model/``
    into ``output_dir``.

    ``model`` is anything ``open_model`` reads; ``data`` a dataset folder with labels, read
    in ``layout`` (default: the model's). ``tolerance`` is in Dice units (0.01 = one point);
    ``levels`` default to all the model's levels. Dice is scored on every case, all levels
    from one sliding pass per case; each level's time per window is the median of
    ``repeats`` timed runs (after an untimed batch) over ``windows`` windows drawn from the
    cases, and its time per case that times the windows a case needs; all on ``device`` at
    ``precision`` (as ``medseg predict`` takes them). Returns the ``PruneResult``. Raises
    ``ConfigError`` for a model that is not UNet++ or lacks a requested level, or for data
    without labelled cases in the model's label scheme.
    """
    from medseg.datasets import discover
    from medseg.files import require_outside

    # The report and the pruned model/ would land among the dataset's files.
    require_outside(output_dir, [data], "--output")
    config, network = open_model(model)
    settings = _Settings(tolerance, levels, repeats, device, precision, show_progress, windows)
    _checked_levels(config, network, str(model), levels)
    chosen_layout = layout or config.preprocessing.layout
    scheme = config.scheme
    options: dict[str, Any] = {}
    if chosen_layout == "folder" and scheme.mode == "classes":
        named = zip(scheme.names, scheme.values, strict=True)
        options = {
            "labels": {name: values[0] for name, values in named},
            "modality": config.preprocessing.modality,
        }
    index = discover(chosen_layout, data, need_labels=True, **options)
    for problem in index.problems:
        logger.warning("left out: %s", problem)
    if index.labels != scheme:
        raise ConfigError(
            f"{data}: its labels {index.labels.to_dict()} differ from the model's "
            f"{scheme.to_dict()}; Dice would compare different structures"
        )
    return _prune(str(model), config, network, index.cases, Path(output_dir), settings)


def _prune(
    model: str,
    config: ModelConfig,
    network: torch.nn.Module,
    cases: Sequence[Case],
    output_dir: Path,
    settings: _Settings,
) -> PruneResult:
    from medseg.pipelines.progress import task_progress

    levels = _checked_levels(config, network, model, settings.levels)
    if settings.repeats < 1:
        raise ConfigError(f"repeats must be at least 1, got {settings.repeats}")
    if settings.windows < 1:
        raise ConfigError(f"windows must be at least 1, got {settings.windows}")
    if not settings.tolerance >= 0:
        raise ConfigError(f"tolerance must be a Dice difference >= 0, got {settings.tolerance}")
    unlabelled = [case.id for case in cases if case.label is None]
    if not cases or unlabelled:
        raise ConfigError(
            f"pruning needs labelled cases; got {len(cases)} case(s)"
            + (f", without labels: {', '.join(unlabelled[:5])}" if unlabelled else "")
        )
    device = resolve_device(settings.device)
    precision = resolve_precision(settings.precision, device)
    network = network.to(device).eval()
    # timed as ``medseg predict`` runs it; the saved model keeps the network as built
    timed = inference_network(network, device)
    rows: dict[int, list[dict[str, Any]]] = {level: [] for level in levels}
    computed: list[int] = []
    roi = window_shape(config.inference.roi_size, config.preprocessing.spatial_dims)
    samples = []
    shares = windows_per_case(settings.windows, len(cases))
    with task_progress("scoring levels", len(cases), settings.show_progress) as advance:
        for index, (case, share) in enumerate(zip(cases, shares, strict=True)):
            case_rows, windows, image = _measure_case(
                timed, config, case, levels, device, precision
            )
            for level in levels:
                rows[level].append(case_rows[level])
            computed.append(windows)
            if share:
                samples.append(sample_windows(image, roi, share, seed=index))
            advance(case.id)
    per_window = seconds_per_window(
        timed,
        torch.cat(samples),
        levels,
        repeats=settings.repeats,
        batch_size=config.inference.sw_batch_size,
        device=device,
        precision=precision,
        slice_wise=len(roi) > len(config.inference.roi_size),
    )
    windows_per_prediction = statistics.fmean(computed)
    names = list(config.scheme.foreground)
    measurements = []
    for level in levels:
        summary = summarise(rows[level], names)
        measurements.append(
            LevelMeasurement(
                level=level,
                parameters=network.level_parameter_count(level),
                flops=window_flops(config, level),
                seconds_per_case=per_window[level] * windows_per_prediction,
                dice={name: summary[f"val/dice/{name}"] for name in names},
                dice_mean=summary["val/dice_mean"],
            )
        )
        logger.info(
            "level %d: mean Dice %.4f, %.3f s per case",
            level,
            measurements[-1].dice_mean,
            measurements[-1].seconds_per_case,
        )
    precision_name = next(name for name, dtype in PRECISIONS.items() if dtype == precision)
    result = PruneResult(
        model=model,
        levels=measurements,
        chosen_level=choose_level({m.level: m.dice_mean for m in measurements}, settings.tolerance),
        reference_level=levels[-1],
        tolerance=settings.tolerance,
        device=f"{device} {precision_name}",
        repeats=settings.repeats,
        cases=[case.id for case in cases],
        windows=sum(len(sample) for sample in samples),
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    result.paths = {
        "table": write_table(output_dir / TABLE_FILE, result),
        "plot": plot_pruning(output_dir / PLOT_FILE, result),
        "model": save_pruned_model(output_dir / MODEL_FOLDER, config, network, result),
    }
    return result


def save_pruned_model(
    directory: Path, config: ModelConfig, network: UNetPlusPlus, result: PruneResult
) -> Path:
    """Write a model directory built at ``result.chosen_level``: ``network.options.prune_level``
    is set, so loading it builds only that level's nodes, and the weights hold only their
    tensors (``level_parameter_names``). Provenance names the parent model and the table.
    Returns ``directory``."""
    level = result.chosen_level
    spec = config.network
    provenance = {
        "pruned_from": result.model,
        "parent": config.provenance,
        "pruning": {
            "level": level,
            "reference_level": result.reference_level,
            "tolerance": result.tolerance,
            "device": result.device,
            "repeats": result.repeats,
            "windows": result.windows,
            "cases": result.cases,
            "table": result.rows(),
        },
    }
    pruned_config = config.model_copy(
        update={
            "network": spec.model_copy(update={"options": spec.options | {"prune_level": level}}),
            "provenance": provenance,
            # measured on the whole network; the pruned one is another network
            "inference": config.inference.model_copy(update={"bf16_agreement": None}),
        }
    )
    pruned = build_from_config(pruned_config)
    state = network.state_dict()
    pruned.load_state_dict({name: state[name] for name in network.level_parameter_names(level)})
    return save_model_dir(directory, pruned_config, pruned)


def prune_after_training(
    model_dir: Path,
    val_cases: Sequence[Case],
    tracker: Tracker,
    *,
    tolerance: float = 0.01,
    repeats: int = 3,
    device: str = "auto",
) -> PruneResult | None:
    """Prune the model a training run just wrote, on its validation cases, into
    ``model_dir.parent / "pruning"``, and log it into the training run's ``tracker``.

    Returns the result, or None (with a warning, never an error: the trained model stays
    usable) when the model is not UNet++ or no validation case has a label.
    """
    labelled = [case for case in val_cases if case.label is not None]
    if not labelled:
        logger.warning("pruning skipped: no labelled validation case")
        return None
    try:
        result = prune_cases(
            model_dir,
            labelled,
            Path(model_dir).parent / "pruning",
            tolerance=tolerance,
            repeats=repeats,
            device=device,
        )
    except ConfigError as error:
        logger.warning("pruning skipped: %s", error)
        return None
    track_pruning(result, tracker)
    return result


def after_training(finished: FinishedTraining) -> None:
    """The post-training step ``train.prune: true`` asks for (``medseg train`` attaches it):
    ``prune_after_training`` on the finished run's model and validation cases."""
    prune_after_training(
        finished.model_dir,
        finished.val_cases,
        finished.tracker,
        device=finished.config.train.device,
    )
