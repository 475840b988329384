"""``medseg train``: the training loop with sliding-window validation, checkpoints and MLflow.

Randomness is re-seeded from ``train.seed`` at the start of every epoch (network init,
data order, augmentation, dropout), so a run resumed from an epoch's checkpoint continues
exactly as the uninterrupted run would, with no random state to save. The caller's global
torch random state is restored when training returns.
"""

from __future__ import annotations

import csv
import io
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from medseg.config import Config, config_to_dict, flatten
from medseg.datasets import discover
from medseg.datasets.splits import kfold_splits, load_splits, save_splits
from medseg.errors import ConfigError
from medseg.files import write_text_atomic
from medseg.pipelines.checkpoints import load_checkpoint, save_checkpoint
from medseg.pipelines.inference import resolve_device
from medseg.pipelines.losses import DeepSupervisionLoss, segmentation_loss
from medseg.pipelines.model_dir import (
    InferenceSpec,
    ModelConfig,
    NetworkSpec,
    build_from_config,
    save_model_dir,
)
from medseg.pipelines.optim import make_optimizer, make_scheduler
from medseg.pipelines.plots import plot_learning_curve
from medseg.pipelines.postprocess import Postprocessing
from medseg.pipelines.progress import epoch_progress
from medseg.pipelines.tracking import Tracker
from medseg.pipelines.validation import summarise, validate
from medseg.transforms.presets import Preprocessing, training_transforms, validation_transforms

logger = logging.getLogger(__name__)

LAST = "checkpoint_last.pt"
BEST = "checkpoint_best.pt"


@dataclass
class TrainResult:
    """What a finished training run produced."""

    run_dir: Path
    model_dir: Path
    best_metric: float
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)
    validation_rows: list[dict[str, Any]] = field(default_factory=list)
    run_id: str | None = None
    tracking_uri: str | None = None


def start_from_prior(network: torch.nn.Module, out_channels: int, prior: float = 0.01) -> None:
    """Set the output biases so every sigmoid starts at ``prior`` (Lin et al., focal loss).

    Rare regions then start as 'absent' instead of 'everywhere', which a batch Dice
    otherwise rewards for many early iterations (BraTS ET stayed everywhere for 500 patches).
    """
    from medseg.networks import output_layers

    for layer in output_layers(network, out_channels):
        if layer.bias is not None:
            torch.nn.init.constant_(layer.bias, float(np.log(prior / (1 - prior))))


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _preprocessing(config: Config, index: Any, train_cases: list[Any]) -> Preprocessing:
    """Preprocessing for this run, with what the config leaves open fitted on ``train_cases``."""
    from medseg.transforms.statistics import ct_statistics, median_spacing

    settings = config.transforms
    modality = settings.modality or index.modality
    spacing = median_spacing(train_cases) if settings.spacing == "auto" else settings.spacing
    crop = settings.foreground_crop
    if crop is None:
        crop = modality in ("mri", "ct")
    intensity = {}
    if modality == "ct":
        window = None if settings.ct_window == "auto" else settings.ct_window
        intensity = ct_statistics(train_cases, window)
    if settings.slices > 1 and not (index.spatial_dims == 3 and len(settings.patch_size) == 2):
        raise ConfigError("transforms.slices > 1 needs a 2D patch_size on volumes (2.5D)")
    return Preprocessing(
        layout=config.data.layout,
        modality=modality,
        channels=list(index.channels),
        spatial_dims=index.spatial_dims,
        spacing=spacing,
        foreground_crop=crop,
        slices=settings.slices,
        patch_size=settings.patch_size,
        intensity=intensity,
    )


def _model_config(config: Config, index: Any, pre: Preprocessing) -> ModelConfig:
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
    )
    postprocessing = Postprocessing.model_validate(config.postprocess.model_dump())
    postprocessing.check(index.labels)
    return ModelConfig(
        network=network,
        preprocessing=pre,
        labels=index.labels.to_dict(),
        inference=inference,
        postprocessing=postprocessing,
    )


def _split(config: Config, index: Any, run_dir: Path) -> dict[str, list[str]]:
    path = run_dir / "splits.json"
    if path.exists():
        splits = load_splits(path)
    else:
        ids = [case.id for case in index.cases]
        splits = kfold_splits(ids, config.data.folds, config.data.split_seed)
        save_splits(path, splits)
    return splits[config.data.fold]


def _datasets(config: Config, index: Any, model_config: ModelConfig, split: dict) -> tuple:
    from monai.data import CacheDataset, Dataset, PersistentDataset

    by_id = {case.id: case.as_dict() for case in index.cases}
    unknown = [c for c in split["train"] + split["val"] if c not in by_id]
    if unknown:
        raise ConfigError(f"splits.json names cases not in {index.root}: {', '.join(unknown[:5])}")
    scheme = index.labels
    train_transform = training_transforms(
        model_config.preprocessing,
        scheme,
        samples_per_case=config.transforms.samples_per_case,
        foreground_ratio=config.transforms.foreground_ratio,
        augment=config.transforms.augment,
    )
    val_transform = validation_transforms(model_config.preprocessing, scheme)

    def dataset(ids: list[str], transform: Any) -> Any:
        cases = [by_id[c] for c in ids]
        if config.transforms.cache == "memory":
            return CacheDataset(cases, transform, progress=False)
        if config.transforms.cache == "disk":
            return PersistentDataset(cases, transform, cache_dir=Path(config.output) / "cache")
        return Dataset(cases, transform)

    return dataset(split["train"], train_transform), dataset(split["val"], val_transform)


def _write_validation_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


def train(config: Config, *, resume: bool = False, show_progress: bool = True) -> TrainResult:
    """Train ``config``'s network on its data; return where the model and metrics are.

    Writes into ``config.output``: ``config.yaml`` (resolved), ``splits.json``,
    ``checkpoint_last.pt`` (every epoch), ``checkpoint_best.pt`` and ``model/`` (the best
    validation Dice so far), ``validation.csv`` and ``learning_curve.png``. With ``resume``
    it continues from ``checkpoint_last.pt`` and the same MLflow run. Raises
    ``ConfigError`` for a run directory that already holds a run (without ``resume``),
    unusable data or a bad network choice.
    """
    run_dir = Path(config.output)
    if resume and not (run_dir / LAST).exists():
        raise ConfigError(f"{run_dir}: nothing to resume (no {LAST})")
    if not resume and (run_dir / LAST).exists():
        raise ConfigError(
            f"{run_dir}: already holds a training run; use --resume {run_dir} or another output"
        )
    index = discover(config.data.layout, config.data.root)
    if index.problems:
        listed = "; ".join(str(p) for p in index.problems[:3])
        more = f" and {len(index.problems) - 3} more" if len(index.problems) > 3 else ""
        raise ConfigError(
            f"{config.data.root}: {len(index.problems)} unusable cases: {listed}{more}"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(
        run_dir / "config.yaml", yaml.safe_dump(config_to_dict(config), sort_keys=False)
    )
    split = _split(config, index, run_dir)
    by_id = {case.id: case for case in index.cases}
    pre = _preprocessing(config, index, [by_id[c] for c in split["train"] if c in by_id])
    model_config = _model_config(config, index, pre)
    device = resolve_device(config.train.device)
    with torch.random.fork_rng(devices=[]):
        return _run(config, index, model_config, split, run_dir, device, resume, show_progress)


def _run(
    config: Config,
    index: Any,
    model_config: ModelConfig,
    split: dict[str, list[str]],
    run_dir: Path,
    device: torch.device,
    resume: bool,
    show_progress: bool,
) -> TrainResult:
    from monai.data import DataLoader

    recipe = config.train
    scheme = index.labels
    _seed_everything(recipe.seed)
    network = build_from_config(model_config)
    if scheme.mode == "regions":
        start_from_prior(network, scheme.out_channels)
    network = network.to(device)
    memory_format = torch.contiguous_format
    if recipe.channels_last and model_config.network.spatial_dims == 3:
        # oneDNN and cuDNN run 3D convolutions about a third faster on NDHWC tensors.
        memory_format = torch.channels_last_3d
        network = network.to(memory_format=memory_format)
    train_set, val_set = _datasets(config, index, model_config, split)
    generator = torch.Generator()
    loader = DataLoader(
        train_set,
        batch_size=recipe.batch_size,
        shuffle=True,
        num_workers=recipe.num_workers,
        generator=generator,
        drop_last=len(train_set) > recipe.batch_size,
    )
    val_loader = DataLoader(val_set, batch_size=1, num_workers=0)
    steps_per_epoch = recipe.iterations_per_epoch or len(loader)
    optimizer = make_optimizer(
        recipe.optimizer, network.parameters(), recipe.lr, recipe.weight_decay
    )
    total_steps = steps_per_epoch * recipe.epochs
    scheduler = make_scheduler(
        optimizer, total_steps, recipe.warmup_epochs * steps_per_epoch, recipe.schedule
    )
    loss_function = DeepSupervisionLoss(segmentation_loss(recipe.loss, scheme)).to(device)

    start_epoch, best_metric, best_epoch, history, run_id = 0, -1.0, -1, [], None
    if resume:
        state = load_checkpoint(run_dir / LAST)
        network.load_state_dict(state["network"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch = int(state["epoch"]) + 1
        best_metric, best_epoch = float(state["best_metric"]), int(state["best_epoch"])
        history, run_id = list(state["history"]), state.get("run_id") or None
    names = list(scheme.foreground)
    tracker = Tracker(
        enabled=config.tracking.enabled,
        experiment=config.tracking.experiment,
        run_name=config.tracking.run_name or run_dir.name,
        run_id=run_id,
    )
    rows: list[dict[str, Any]] = []
    with tracker:
        if not resume:
            tracker.log_params(flatten(config_to_dict(config)))
            tracker.set_tags({"medseg.run_dir": str(run_dir.resolve())})
        for epoch in range(start_epoch, recipe.epochs):
            _seed_everything(recipe.seed + epoch)
            generator.manual_seed(recipe.seed + epoch)
            train_set.transform.set_random_state(seed=(recipe.seed + epoch) % 2**32)
            network.train()
            started = time.perf_counter()
            losses, samples = [], 0
            with epoch_progress(epoch, recipe.epochs, steps_per_epoch, show_progress) as advance:
                batches = iter(loader)
                for _ in range(steps_per_epoch):
                    try:
                        batch = next(batches)
                    except StopIteration:
                        batches = iter(loader)
                        batch = next(batches)
                    image = batch["image"].as_tensor().to(device, memory_format=memory_format)
                    target = torch.as_tensor(batch["label"]).as_subclass(torch.Tensor).to(device)
                    optimizer.zero_grad(set_to_none=True)
                    loss = loss_function(network(image), target)
                    loss.backward()
                    if recipe.grad_clip:
                        torch.nn.utils.clip_grad_norm_(network.parameters(), recipe.grad_clip)
                    optimizer.step()
                    scheduler.step()
                    losses.append(float(loss.detach()))
                    samples += image.shape[0]
                    advance(losses[-1])
            seconds = time.perf_counter() - started
            metrics = {
                "train/loss": float(np.mean(losses)),
                "train/lr": optimizer.param_groups[0]["lr"],
                "train/samples_per_second": samples / seconds,
            }
            validating = (epoch + 1) % recipe.val_every == 0 or epoch + 1 == recipe.epochs
            if validating:
                rows = validate(network, val_loader, scheme, model_config.inference, device)
                metrics |= summarise(rows, names)
                improved = metrics["val/dice_mean"] > best_metric
                if improved:
                    best_metric, best_epoch = metrics["val/dice_mean"], epoch
                    _save_best(run_dir, model_config, network, rows, epoch, metrics)
                logger.info(
                    "epoch %d/%d  loss %.4f  val dice %s  mean %.4f%s",
                    epoch + 1,
                    recipe.epochs,
                    metrics["train/loss"],
                    " ".join(f"{n} {metrics[f'val/dice/{n}']:.3f}" for n in names),
                    metrics["val/dice_mean"],
                    "  (best)" if improved else "",
                )
            history.append({"epoch": epoch, **metrics})
            tracker.log_metrics(metrics, step=epoch)
            save_checkpoint(
                run_dir / LAST,
                {
                    "network": network.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "epoch": epoch,
                    "best_metric": best_metric,
                    "best_epoch": best_epoch,
                    "history": history,
                    "run_id": tracker.run_id or "",
                },
            )
        plot_learning_curve(run_dir / "learning_curve.png", history)
        for artifact in ("config.yaml", "splits.json", "validation.csv", "learning_curve.png"):
            if (run_dir / artifact).exists():
                tracker.log_artifact(run_dir / artifact)
        tracker.log_artifact(run_dir / "model", "model")
        tracker.log_metrics(
            {"best/val_dice_mean": best_metric, "best/epoch": best_epoch}, step=recipe.epochs
        )
    return TrainResult(
        run_dir=run_dir,
        model_dir=run_dir / "model",
        best_metric=best_metric,
        best_epoch=best_epoch,
        history=history,
        validation_rows=rows,
        run_id=tracker.run_id,
        tracking_uri=tracker.uri if tracker.run_id else None,
    )


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
    save_model_dir(
        run_dir / "model", model_config.model_copy(update={"provenance": provenance}), network
    )
    _write_validation_csv(run_dir / "validation.csv", rows)
