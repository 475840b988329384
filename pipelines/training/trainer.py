"""The epoch loop of ``medseg train``: optimisation, validation, checkpoints, tracking.

Randomness is derived from ``train.seed`` per epoch (dropout, data order) and per sample
(augmentation, see ``pipelines/training/data.py``), so a run resumed from an epoch's checkpoint
continues exactly as the uninterrupted one, with no random state to carry over.

Epochs are numbered from 1 wherever a user sees them: the log, MLflow steps, the history,
``best_epoch`` and the checkpoint's ``epoch`` (the number of epochs finished).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.config import Config, config_to_dict, flatten
from medseg.errors import TrainingError
from medseg.networks import abilities, as_staged
from medseg.pipelines.checkpoints import load_checkpoint, save_checkpoint
from medseg.pipelines.distributed import (
    ProcessInfo,
    barrier,
    broadcast_from_main,
    mean_across_ranks,
)
from medseg.pipelines.inference import resolve_precision
from medseg.pipelines.model_dir import ModelConfig, build_from_config, load_weights
from medseg.pipelines.progress import duration, epoch_progress
from medseg.pipelines.tracking import Tracker
from medseg.pipelines.training.data import SeededDataset, cached_dataset, training_loader
from medseg.pipelines.training.losses import DeepSupervisionLoss, segmentation_loss
from medseg.pipelines.training.optim import lr_factor, make_optimizer
from medseg.pipelines.validation import summarise, validate
from medseg.transforms.presets import training_transforms, validation_transforms

logger = logging.getLogger(__name__)

LAST = "checkpoint_last.pt"
BEST = "checkpoint_best.pt"
# Marks a checkpoint whose epochs count from 1; older checkpoints counted from 0.
EPOCH_BASE = "epoch_base"


def start_from_prior(network: torch.nn.Module, out_channels: int, prior: float = 0.01) -> None:
    """Set the output biases so every sigmoid starts at ``prior`` (Lin et al., focal loss).

    Rare regions then start as 'absent' instead of 'everywhere', which a batch Dice
    otherwise rewards for many early iterations (BraTS ET stayed everywhere for 500 patches).
    """
    from medseg.networks import output_layers

    for layer in output_layers(network, out_channels):
        if layer.bias is not None:
            torch.nn.init.constant_(layer.bias, float(np.log(prior / (1 - prior))))


class Trainer:
    """Trains one network on one split; ``run`` returns the history and best metric.

    Args:
        config: the run's config.
        index: the dataset index (cases, label scheme).
        model_config: what the model directory will hold.
        split: ``{"train": [ids], "val": [ids]}``.
        run_dir: where checkpoints, the model directory and artifacts go.
        device: the training device.
        info: this process's rank and the world size.
        show_progress: draw progress bars.
    """

    def __init__(
        self,
        config: Config,
        index: Any,
        model_config: ModelConfig,
        split: dict[str, list[str]],
        run_dir: Path,
        device: torch.device,
        info: ProcessInfo,
        show_progress: bool,
    ) -> None:
        recipe = config.train
        if recipe.batch_size % info.world_size:
            raise ValueError(
                f"train.batch_size {recipe.batch_size} must divide by the {info.world_size} ranks"
            )
        self.config, self.recipe, self.index = config, recipe, index
        self.model_config, self.run_dir, self.device, self.info = (
            model_config,
            run_dir,
            device,
            info,
        )
        self.show_progress = show_progress and info.is_main
        self.scheme = index.labels
        self.names = list(self.scheme.foreground)
        self.sampled_cases = 0
        torch.manual_seed(recipe.seed)
        self.network = build_from_config(model_config)
        if self.scheme.mode == "regions":
            start_from_prior(self.network, self.scheme.out_channels)
        if recipe.init_from:
            from medseg.pipelines.training.finetune import initialise_from

            initialise_from(self.network, recipe.init_from, model_config)
        self.network = self.network.to(device)
        self.memory_format = torch.contiguous_format
        if recipe.channels_last and model_config.network.spatial_dims == 3:
            # oneDNN and cuDNN run 3D convolutions about a third faster on NDHWC tensors.
            self.memory_format = torch.channels_last_3d
            self.network = self.network.to(memory_format=self.memory_format)
        self.model = self.network
        if info.distributed:
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.network,
                device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=bool(recipe.stages),
            )
        self._data(split)
        self.steps_per_epoch = recipe.iterations_per_epoch or max(1, len(self.loader))
        self.optimizer = make_optimizer(
            recipe.optimizer, self.network.parameters(), recipe.lr, recipe.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.autocast = resolve_precision(recipe.precision, device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.autocast == torch.float16)
        loss = segmentation_loss(recipe.loss, self.scheme, recipe.class_weights)
        self.loss = DeepSupervisionLoss(loss).to(device)
        # Validation logits come back on the CPU, whole volumes: their loss is taken there.
        self.validation_loss = segmentation_loss(recipe.loss, self.scheme, recipe.class_weights)

    def _data(self, split: dict[str, list[str]]) -> None:
        from monai.data import DataLoader

        by_id = {case.id: case.as_dict() for case in self.index.cases}
        settings, pre = self.config.transforms, self.model_config.preprocessing
        cache_dir = self.run_dir / "cache"
        train_transform = training_transforms(
            pre,
            self.scheme,
            samples_per_case=settings.samples_per_case,
            foreground_ratio=settings.foreground_ratio,
            foreground_classes=settings.foreground_classes,
            augment=settings.augment,
        )
        train_cases = [by_id[c] for c in split["train"]]
        self.train_set = SeededDataset(
            cached_dataset(train_cases, train_transform, settings.cache, cache_dir),
            self.recipe.seed,
        )
        self.loader, self.sampler = training_loader(
            self.train_set,
            batch_size=int(self.recipe.batch_size),  # the plan resolved "auto"
            rank=self.info.rank,
            world_size=self.info.world_size,
            seed=self.recipe.seed,
            num_workers=self.recipe.num_workers,
        )
        self.val_loader = None
        if self.info.is_main:
            val_cases = [by_id[c] for c in split["val"]]
            val_transform = validation_transforms(pre, self.scheme)
            val_set = cached_dataset(val_cases, val_transform, settings.cache, cache_dir)
            self.val_loader = DataLoader(val_set, batch_size=1, num_workers=0)

    def _lr_factor(self, step: int) -> float:
        recipe = self.recipe
        total = self.steps_per_epoch * recipe.total_epochs
        factor = lr_factor(
            step, total, recipe.warmup_epochs * self.steps_per_epoch, recipe.schedule
        )
        stage = recipe.stage_at(step // self.steps_per_epoch)
        return factor * (stage.lr_scale if stage else 1.0)

    def _apply_stage(self, epoch: int) -> None:
        stage = self.recipe.stage_at(epoch)
        if stage is None:
            return
        name = self.model_config.network.name
        if not abilities(name).staged:
            if stage.mode is not None:
                raise ValueError(f"{name} has no mode to set in a stage")
            return
        staged = as_staged(self.network)
        if stage.mode is not None:
            staged.mode = stage.mode
        staged.freeze_2d(stage.freeze_2d)

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        recipe = self.recipe
        torch.manual_seed(recipe.seed + epoch)
        self.train_set.set_epoch(epoch)
        self.sampler.set_epoch(epoch)
        self.model.train()
        started, losses, samples = time.perf_counter(), [], 0
        batches = iter(self.loader)
        with epoch_progress(
            epoch + 1, recipe.total_epochs, self.steps_per_epoch, self.show_progress
        ) as advance:
            for step in range(self.steps_per_epoch):
                try:
                    batch = next(batches)
                except StopIteration:
                    batches = iter(self.loader)
                    batch = next(batches)
                image = batch["image"].as_tensor().to(self.device, memory_format=self.memory_format)
                target = torch.as_tensor(batch["label"]).as_subclass(torch.Tensor).to(self.device)
                with torch.autocast(
                    self.device.type, dtype=self.autocast, enabled=self.autocast is not None
                ):
                    loss = self.loss(self.model(image), target)
                self.scaler.scale(loss / recipe.accumulate).backward()
                if (step + 1) % recipe.accumulate == 0 or step + 1 == self.steps_per_epoch:
                    self.scaler.unscale_(self.optimizer)
                    if recipe.grad_clip:
                        torch.nn.utils.clip_grad_norm_(self.network.parameters(), recipe.grad_clip)
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                    self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                losses.append(float(loss.detach()))
                if not math.isfinite(losses[-1]):
                    # Raised before this epoch's checkpoint: checkpoint_last.pt and model/
                    # keep the last finite weights.
                    raise TrainingError(
                        f"epoch {epoch + 1}, step {step + 1}: the training loss is "
                        f"{losses[-1]}; training diverged (lower train.lr or check the data)"
                    )
                samples += image.shape[0]
                advance(losses[-1])
        seconds = time.perf_counter() - started
        return {
            "train/loss": mean_across_ranks(float(np.mean(losses)), self.device),
            "train/lr": self.optimizer.param_groups[0]["lr"],
            "train/samples_per_second": samples * self.info.world_size / seconds,
        }

    def _checkpoint(self, epoch: int, state: dict[str, Any]) -> None:
        save_checkpoint(
            self.run_dir / LAST,
            {
                "network": self.network.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "epoch": epoch,
                EPOCH_BASE: 1,
            }
            | state,
        )

    def run(self, state: dict[str, Any] | None, tracker: Tracker, on_best: Any) -> dict[str, Any]:
        """Train to the end (or an early stop), continuing from checkpoint ``state`` if given.

        ``on_best(network, rows, epoch, metrics)`` saves a new best model. Returns
        ``history`` (one row per epoch, ``epoch`` from 1), ``best_metric``, ``best_epoch``
        (from 1; 0 before any validation) and ``rows`` (last validation per case).
        """
        recipe = self.recipe
        start, best, best_epoch, stale, history = 0, -1.0, 0, 0, []
        if state is not None:
            state = counted_from_one(state)
            load_weights(self.network, state["network"], self.run_dir / LAST)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            start = int(state["epoch"])
            best, best_epoch = float(state["best_metric"]), int(state["best_epoch"])
            stale, history = int(state["stale"]), list(state["history"])
        else:
            tracker.log_params(flatten(config_to_dict(self.config)))
            tracker.set_tags({"medseg.run_dir": str(self.run_dir.resolve())})
        rows: list[dict[str, Any]] = []
        self._announce(start)
        timings: list[float] = []
        for epoch in range(start, recipe.total_epochs):
            started = time.perf_counter()
            number = epoch + 1
            self._apply_stage(epoch)
            metrics = self._train_epoch(epoch)
            improved = 0.0
            if number % recipe.val_every == 0 or number == recipe.total_epochs:
                if self.info.is_main:
                    rows, self.sampled_cases = self._validate()
                    metrics |= summarise(rows, self.names)
                    if metrics["val/dice_mean"] > best:
                        best, best_epoch, improved = metrics["val/dice_mean"], number, 1.0
                        on_best(self.network, rows, number, metrics)
                stale = 0 if broadcast_from_main(improved, self.device) else stale + 1
            history.append({"epoch": number, **metrics})
            tracker.log_metrics(metrics, step=number)
            if self.info.is_main:
                progress: dict[str, Any] = {
                    "best_metric": best,
                    "best_epoch": best_epoch,
                    "stale": stale,
                }
                progress |= {"history": history, "run_id": tracker.run_id or ""}
                self._checkpoint(number, progress)
                timings.append(time.perf_counter() - started)
                self._log_epoch(number, metrics, improved, timings)
            barrier()
            if recipe.early_stopping and stale >= recipe.early_stopping:
                logger.info("early stop: no better validation Dice in %d validations", stale)
                break
        full_rows = None
        if self.info.is_main and self.sampled_cases and best_epoch > 0:
            full_rows = self._full_validation()
        return {
            "history": history,
            "best_metric": best,
            "best_epoch": best_epoch,
            "rows": full_rows or rows,
            "full_validation": full_rows,
        }

    def _full_validation(self) -> list[dict[str, Any]]:
        """Dice per case of the best checkpoint from full sliding-window passes, for a run
        whose validations scored some cases on sample windows (``train.val_max_windows``);
        the network is left holding the best weights."""
        loader = self.val_loader or []
        logger.info(
            "full validation of the best checkpoint on %d case(s) (sliding window)", len(loader)
        )
        best = load_checkpoint(self.run_dir / BEST)
        load_weights(self.network, best["network"], self.run_dir / BEST)
        rows, _ = validate(
            self.network,
            loader,
            self.scheme,
            self.model_config.inference,
            self.device,
            cases=len(loader),
            show_progress=self.show_progress,
            log_cases=True,
        )
        return rows

    def _announce(self, start: int) -> None:
        """The line a log shows before the first epoch, which may take minutes."""
        validated = 0 if self.val_loader is None else len(self.val_loader)
        logger.info(
            "training %s (%s) on %s from epoch %d to %d: %d iterations per epoch, "
            "%d training cases, %d validation cases",
            self.model_config.network.name,
            self.model_config.network.preset,
            self.device,
            start + 1,
            self.recipe.total_epochs,
            self.steps_per_epoch,
            len(self.train_set),
            validated,
        )

    def _validate(self) -> tuple[list[dict[str, Any]], int]:
        """Rows of this epoch's validation (within ``train.val_max_windows``) and how many
        cases were scored on sample windows; only the main process validates."""
        loader = self.val_loader or []
        return validate(
            self.network,
            loader,
            self.scheme,
            self.model_config.inference,
            self.device,
            loss=self.validation_loss,
            max_windows=self.recipe.val_max_windows,
            cases=len(loader),
            show_progress=self.show_progress,
        )

    def _log_epoch(
        self, number: int, metrics: dict[str, float], improved: float, timings: list[float]
    ) -> None:
        """One line per epoch: losses, validation Dice if validated, duration and ETA."""
        parts = [f"epoch {number}/{self.recipe.total_epochs}", f"loss {metrics['train/loss']:.4f}"]
        if "val/loss" in metrics:
            parts.append(f"val loss {metrics['val/loss']:.4f}")
        if "val/dice_mean" in metrics:
            dice = " ".join(f"{n} {metrics[f'val/dice/{n}']:.3f}" for n in self.names)
            parts.append(f"val dice {dice} mean {metrics['val/dice_mean']:.4f}")
            if self.sampled_cases:
                parts.append(f"({self.sampled_cases} case(s) on sample windows)")
            if improved:
                parts.append("(best)")
        remaining = self.recipe.total_epochs - number
        eta = float(np.mean(timings)) * remaining
        parts.append(f"{duration(timings[-1])}, ETA {duration(eta)}")
        logger.info("  ".join(parts))


def counted_from_one(state: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint with its epochs counted from 1, converting one written before that
    (``epoch``, ``best_epoch`` and the history's epochs were indices from 0)."""
    if state.get(EPOCH_BASE) == 1:
        return state
    history = [row | {"epoch": int(row["epoch"]) + 1} for row in state.get("history", [])]
    converted = {"epoch": int(state["epoch"]) + 1, "history": history, EPOCH_BASE: 1}
    if "best_epoch" in state:
        converted["best_epoch"] = int(state["best_epoch"]) + 1
    return state | converted
