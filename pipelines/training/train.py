"""``medseg train``: set up a run (data, split, preprocessing, model config), train it with
``Trainer``, and save the model directory, artifacts and MLflow records.

``--folds all`` trains every fold in turn into ``<output>/fold_<k>`` and writes the
cross-validation summary; each fold resumes on its own. Work that follows a finished run
(pruning the model, say) is a ``PostTrainingStep`` the caller attaches, so training
imports none of it.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from medseg.config import Config, config_to_dict
from medseg.datasets import discover
from medseg.datasets.base import Case
from medseg.datasets.splits import kfold_splits, load_splits, save_splits
from medseg.errors import ConfigError
from medseg.files import is_within, require_outside, write_text_atomic
from medseg.networks import abilities, as_staged
from medseg.pipelines.case_locks import try_lock
from medseg.pipelines.checkpoints import load_checkpoint, save_checkpoint
from medseg.pipelines.distributed import process_group, process_info
from medseg.pipelines.inference import resolve_device
from medseg.pipelines.model_dir import (
    InferenceSpec,
    ModelConfig,
    NetworkSpec,
    Postprocessing,
    save_model_dir,
)
from medseg.pipelines.resources import require_cache_memory
from medseg.pipelines.tracking import Tracker, code_version_tags
from medseg.pipelines.training.planner import FINGERPRINT_FILE, PLAN_FILE, PlannedRun, plan_run
from medseg.pipelines.training.plots import plot_learning_curve
from medseg.pipelines.training.trainer import BEST, LAST, Trainer
from medseg.pipelines.validation import summarise
from medseg.transforms.presets import Preprocessing

logger = logging.getLogger(__name__)

SUMMARY = "training_summary.json"


@dataclass(frozen=True)
class FinishedTraining:
    """What a post-training step receives from a finished run (main process only):
    the resolved ``config``, the best ``model_dir``, the ``val_cases`` it was chosen on and
    the run's MLflow ``tracker``, still open for the step's records."""

    config: Config
    model_dir: Path
    val_cases: list[Case]
    tracker: Tracker


PostTrainingStep = Callable[[FinishedTraining], None]
"""Work run after training, in the training run (``medseg train`` attaches pruning)."""


@dataclass
class TrainResult:
    """What a finished training run produced."""

    run_dir: Path
    model_dir: Path
    best_metric: float
    best_epoch: int  # from 1; 0 when never validated
    history: list[dict[str, float]] = field(default_factory=list)
    validation_rows: list[dict[str, Any]] = field(default_factory=list)
    run_id: str | None = None
    tracking_uri: str | None = None
    tracking_links: list[str] = field(default_factory=list)


def _preprocessing(config: Config, index: Any, planned: PlannedRun) -> Preprocessing:
    """Preprocessing for this run, from its resolved config and the statistics it fitted."""
    settings = config.transforms
    if settings.slices > 1 and not (index.spatial_dims == 3 and len(settings.patch_size) == 2):
        raise ConfigError("transforms.slices > 1 needs a 2D patch_size on volumes (2.5D)")
    return Preprocessing(
        layout=config.data.layout,
        modality=settings.modality or index.modality,
        channels=list(index.channels),
        spatial_dims=index.spatial_dims,
        spacing=settings.spacing,
        foreground_crop=settings.foreground_crop,
        slices=settings.slices,
        patch_size=settings.patch_size,
        intensity=planned.ct_statistics,
        normalization=settings.normalization,
    )


def _model_config(
    config: Config, index: Any, pre: Preprocessing, plan: dict[str, Any]
) -> ModelConfig:
    network = NetworkSpec(
        name=config.network.name,
        preset=config.network.preset,
        spatial_dims=len(config.transforms.patch_size),
        in_channels=len(index.channels) * pre.slices,
        out_channels=index.labels.out_channels,
        options=config.network.options,
    )
    inference = InferenceSpec(
        roi_size=config.transforms.patch_size,
        overlap=config.infer.overlap,
        sw_batch_size=config.infer.sw_batch_size,
        mode=config.infer.mode,
        coarse_to_fine=config.infer.coarse_to_fine,
        coarse_factor=config.infer.coarse_factor,
        coarse_margin_mm=config.infer.coarse_margin_mm,
    )
    from medseg.pipelines.label_table import labels_with_table
    from medseg.pipelines.provenance import dataset_fingerprint, git_commit

    postprocessing = Postprocessing.model_validate(config.postprocess.model_dump())
    postprocessing.check(index.labels)
    provenance = {
        "git_commit": git_commit(),
        "dataset_fingerprint": dataset_fingerprint(index.datalist()),
        "dataset": str(config.data.root),
        "fold": None if config.data.holdout else config.data.fold,
    }
    if config.train.init_from:
        provenance["init_from"] = config.train.init_from
    return ModelConfig(
        network=network,
        preprocessing=pre,
        labels=labels_with_table(index.labels, pre.layout, config.label_table),
        inference=inference,
        postprocessing=postprocessing,
        provenance=provenance,
        plan=plan,
    )


def discover_training_data(config: Config) -> Any:
    """The dataset index a run trains on: the layout's discovery, the config's label names
    for a ``folder`` layout, and the cases of ``data.datalist`` when one is given."""
    from medseg.datasets.datalist import load_datalist

    options: dict[str, Any] = {}
    if config.data.layout == "folder":
        options = {"labels": config.data.labels, "modality": config.transforms.modality}
    # Validation reads every header and label once, so a broken case stops the run now,
    # named, instead of crashing an epoch hours in.
    index = discover(config.data.layout, config.data.root, validate=True, **options)
    if config.data.datalist is not None:
        index.cases = load_datalist(config.data.datalist, config.data.root)
    return index


def _split(config: Config, index: Any, run_dir: Path) -> dict[str, list[str]]:
    from medseg.datasets.splits import holdout_split

    path = run_dir / "splits.json"
    if path.exists():
        splits = load_splits(path)
    else:
        ids = [case.id for case in index.cases]
        if config.data.holdout:
            splits = [holdout_split(ids, config.data.holdout, config.data.split_seed)]
        else:
            splits = kfold_splits(ids, config.data.folds, config.data.split_seed)
        # Every rank draws the same splits; only the main one writes them, as the other
        # ranks' run folder may be another node's disk.
        if process_info().is_main:
            save_splits(path, splits)
    return splits[0 if config.data.holdout else config.data.fold]


def _write_validation_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


def train(
    config: Config,
    *,
    resume: bool = False,
    show_progress: bool = True,
    after: Sequence[PostTrainingStep] = (),
) -> TrainResult:
    """Train ``config``'s network on its data; return where the model and metrics are.

    Writes into ``config.output``: ``config.yaml`` (resolved), ``splits.json``,
    ``checkpoint_last.pt`` (every epoch), ``checkpoint_best.pt`` and ``model/`` (the best
    validation Dice so far), ``validation.csv`` and ``learning_curve.png``. With ``resume``
    it continues from ``checkpoint_last.pt`` and the same MLflow run. The steps of
    ``after`` run in order once the model is saved, inside the run's tracking. Raises
    ``ConfigError`` for a run directory that already holds a run (without ``resume``), is
    in use by another training process, or lies in or above the data root, for unusable
    data or a bad network choice.
    """
    run_dir = Path(config.output)
    _require_apart(run_dir, Path(config.data.root))
    if not process_info().is_main:
        return _train_unlocked(config, resume=resume, show_progress=show_progress, after=after)
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a file in its place, a read-only or full disk
        raise ConfigError(f"{run_dir}: cannot create the run folder ({error})") from error
    # Two runs into one folder would interleave their checkpoints and model/; the kernel
    # frees the lock when its holder dies, so a killed run can be resumed at once.
    lock = try_lock(run_dir / "training")
    if lock is None:
        raise ConfigError(f"{run_dir}: another medseg train is running there; wait for it")
    try:
        return _train_unlocked(config, resume=resume, show_progress=show_progress, after=after)
    finally:
        lock.release()
        if created:
            # A run refused before writing anything leaves no empty folder behind; rmdir
            # removes only an empty one.
            with contextlib.suppress(OSError):
                run_dir.rmdir()


def _train_unlocked(
    config: Config, *, resume: bool, show_progress: bool, after: Sequence[PostTrainingStep]
) -> TrainResult:
    """``train`` once the run directory is this process's."""
    run_dir = Path(config.output)
    if resume and not (run_dir / LAST).exists():
        raise ConfigError(f"{run_dir}: nothing to resume (no {LAST})")
    if not resume and (run_dir / LAST).exists():
        raise ConfigError(
            f"{run_dir}: already holds a training run; use --resume {run_dir} or another output"
        )
    if config.train.prune and not abilities(config.network.name).prunable:
        raise ConfigError(
            f"train.prune measures UNet++ pruning levels; {config.network.name} has none"
        )
    logger.info("%s: checking the %s data in %s", run_dir, config.data.layout, config.data.root)
    index = discover_training_data(config)
    if index.problems:
        listed = "; ".join(str(p) for p in index.problems[:3])
        more = f" and {len(index.problems) - 3} more" if len(index.problems) > 3 else ""
        raise ConfigError(
            f"{config.data.root}: {len(index.problems)} unusable cases: {listed}{more}"
        )
    device = resolve_device(config.train.device)
    run_dir.mkdir(parents=True, exist_ok=True)
    split = _split(config, index, run_dir)
    by_id = {case.id: case for case in index.cases}
    train_cases = [by_id[c] for c in split["train"] if c in by_id]
    planned = plan_run(config, index, train_cases, device_type=device.type)
    config = planned.config
    info = process_info()
    if info.is_main:
        planned.write(run_dir)
        write_text_atomic(
            run_dir / "config.yaml", yaml.safe_dump(config_to_dict(config), sort_keys=False)
        )
    pre = _preprocessing(config, index, planned)
    model_config = _model_config(config, index, pre, planned.plan)
    if device.type == "cuda" and info.distributed:
        device = torch.device("cuda", info.local_rank)
    if config.transforms.cache == "memory":
        require_cache_memory(index.cases, model_config.preprocessing.spacing)
    state = load_checkpoint(run_dir / LAST) if resume else None
    tracker = Tracker(
        enabled=config.tracking.enabled and info.is_main,
        experiment=config.tracking.experiment,
        run_name=config.tracking.run_name or run_dir.name,
        run_id=(state or {}).get("run_id") or None,
    )
    with process_group(info, device), torch.random.fork_rng(devices=[]), tracker:
        logger.info(
            "loading %d training and %d validation cases (cache: %s)",
            len(split["train"]),
            len(split["val"]),
            config.transforms.cache,
        )
        trainer = Trainer(config, index, model_config, split, run_dir, device, info, show_progress)
        if tracker.active:
            _track_sources(tracker, config, index, model_config, run_dir, first=state is None)
            # The model directory names the run that trained it (evaluate --track links it).
            provenance = model_config.provenance | {"mlflow_run_id": tracker.run_id}
            model_config = model_config.model_copy(update={"provenance": provenance})

        def on_best(network: Any, rows: list, epoch: int, metrics: dict) -> None:
            _save_best(run_dir, model_config, network, rows, epoch, metrics)

        outcome = trainer.run(state, tracker, on_best)
        if info.is_main:
            if outcome["full_validation"]:
                # the windowed Dice chose the checkpoint; the full passes describe it
                _write_validation_csv(run_dir / "validation.csv", outcome["full_validation"])
            _finish(run_dir, config, outcome, tracker)
            if config.train.prune and not after:
                logger.warning("train.prune is set but no pruning step is attached; not pruned")
            finished = FinishedTraining(
                config, run_dir / "model", [by_id[c] for c in split["val"]], tracker
            )
            for step in after:
                step(finished)
            best = [row for row in outcome["history"] if row["epoch"] == outcome["best_epoch"]]
            summary = {k: outcome[k] for k in ("best_metric", "best_epoch")}
            summary["validation"] = best[0] if best else {}
            if outcome["full_validation"]:
                names = list(index.labels.foreground)
                summary["full_validation"] = summarise(outcome["full_validation"], names)
            write_text_atomic(run_dir / SUMMARY, json.dumps(summary, indent=1))
    return TrainResult(
        run_dir=run_dir,
        model_dir=run_dir / "model",
        best_metric=outcome["best_metric"],
        best_epoch=outcome["best_epoch"],
        history=outcome["history"],
        validation_rows=outcome["rows"],
        run_id=tracker.run_id,
        tracking_uri=tracker.uri if tracker.run_id else None,
        tracking_links=tracker.links() if tracker.run_id else [],
    )


def _track_sources(
    tracker: Tracker,
    config: Config,
    index: Any,
    model_config: ModelConfig,
    run_dir: Path,
    *,
    first: bool,
) -> None:
    """Tag the run with the code that runs it and, on its first start, log the dataset as
    its training input: the data root's name, its layout and case count, and the digest
    of the planner's ``fingerprint.json``."""
    import hashlib

    tracker.set_tags(code_version_tags())
    fingerprint = run_dir / FINGERPRINT_FILE
    if not first or not fingerprint.is_file():
        return
    tags = {
        "layout": config.data.layout,
        "cases": str(len(index.cases)),
        "files_fingerprint": str(model_config.provenance.get("dataset_fingerprint")),
    }
    digest = hashlib.sha256(fingerprint.read_bytes()).hexdigest()
    tracker.log_dataset(Path(config.data.root), digest, tags)


def _require_apart(run_dir: Path, data_root: Path) -> None:
    """Refuse a run directory equal to, inside or above the data root: a run writes
    config.yaml, model/, checkpoints and plots there, over any user file of those names."""
    require_outside(run_dir, [data_root], "output (--set output=DIR)")
    if is_within(data_root, run_dir):
        raise ConfigError(
            f"{run_dir}: holds the data root {data_root}; a run's files (config.yaml, model/ "
            "...) could replace data there; choose another output (--set output=DIR)"
        )


def _finish(run_dir: Path, config: Config, outcome: dict[str, Any], tracker: Tracker) -> None:
    """Plots and artifacts at the end of a run, and the model in MLflow (registered if asked)."""
    plot_learning_curve(
        run_dir / "learning_curve.png", outcome["history"], title=tracker.run_name or run_dir.name
    )
    artifacts = (
        "config.yaml",
        "splits.json",
        FINGERPRINT_FILE,
        PLAN_FILE,
        "validation.csv",
        "learning_curve.png",
    )
    for artifact in artifacts:
        if (run_dir / artifact).exists():
            tracker.log_artifact(run_dir / artifact)
    best = {"best/val_dice_mean": outcome["best_metric"], "best/epoch": outcome["best_epoch"]}
    tracker.log_metrics(best, step=config.train.total_epochs)
    if (run_dir / "model").is_dir():
        tracker.log_model(run_dir / "model", register=config.train.register_as)


def _save_best(
    run_dir: Path,
    model_config: ModelConfig,
    network: torch.nn.Module,
    rows: list[dict[str, Any]],
    epoch: int,
    metrics: dict[str, float],
) -> None:
    save_checkpoint(run_dir / BEST, {"network": network.state_dict(), "epoch": epoch})
    validation = {k: round(v, 5) for k, v in metrics.items() if k.startswith("val/")}
    provenance = model_config.provenance | {"epoch": epoch, "validation": validation}
    options = dict(model_config.network.options)
    if abilities(model_config.network.name).staged:
        # a staged run's best may come from its 2D stage
        options["mode"] = as_staged(network).mode
    update = {
        "provenance": provenance,
        "network": model_config.network.model_copy(update={"options": options}),
    }
    save_model_dir(run_dir / "model", model_config.model_copy(update=update), network)
    _write_validation_csv(run_dir / "validation.csv", rows)


def train_folds(
    config: Config, *, show_progress: bool = True, after: Sequence[PostTrainingStep] = ()
) -> dict[str, Any]:
    """Train every fold of ``config.data.folds`` into ``<output>/fold_<k>``, each resumed if
    interrupted and skipped if finished, then write ``cross_validation.json``: the best
    validation Dice per structure for each fold, with the mean and std over folds.

    ``medseg predict <output>`` then ensembles the folds' models.
    """
    root = Path(config.output)
    folds = []
    for fold in range(config.data.folds):
        fold_dir = root / f"fold_{fold}"
        if not (fold_dir / SUMMARY).exists():
            fold_config = config.model_copy(
                update={"output": fold_dir, "data": config.data.model_copy(update={"fold": fold})}
            )
            resume = (fold_dir / LAST).exists()
            train(fold_config, resume=resume, show_progress=show_progress, after=after)
        summary = json.loads((fold_dir / SUMMARY).read_text(encoding="utf-8"))
        dice = {
            key.removeprefix("val/dice/"): value
            for key, value in summary["validation"].items()
            if key.startswith("val/dice/")
        }
        folds.append({"fold": fold, "dice_mean": summary["best_metric"], "dice": dice})
    names = list(folds[0]["dice"])
    table = {name: [f["dice"][name] for f in folds] for name in names}
    table["mean"] = [f["dice_mean"] for f in folds]
    result = {
        "folds": folds,
        "mean": {k: float(np.mean(v)) for k, v in table.items()},
        "std": {k: float(np.std(v)) for k, v in table.items()},
    }
    write_text_atomic(root / "cross_validation.json", json.dumps(result, indent=1))
    return result
