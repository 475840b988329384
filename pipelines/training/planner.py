"""Resolve a run's ``auto`` choices from its training cases: ``fingerprint.json`` and
``plan.json`` for ``medseg plan`` and ``medseg train`` (rules in ``pipelines/training/plan.py``)."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medseg.config import Config
from medseg.datasets.base import Case, DatasetIndex
from medseg.datasets.fingerprint import Fingerprint, fingerprint_dataset
from medseg.errors import ConfigError
from medseg.files import write_text_atomic
from medseg.pipelines.training import plan as rules

logger = logging.getLogger(__name__)

FINGERPRINT_FILE = "fingerprint.json"
PLAN_FILE = "plan.json"
# Networks that only exist in 2D: an ``auto`` patch for them is in-plane on volumes.
TWO_D_ONLY = ("att_swinunet",)


@dataclass
class PlannedRun:
    """A config with every ``auto`` resolved, the plan that resolved it and the fingerprint
    it was made from; ``ct_statistics`` holds the fitted CT window (empty for other data)."""

    config: Config
    plan: dict[str, Any]
    fingerprint: Fingerprint
    ct_statistics: dict[str, float]

    def write(self, folder: Path) -> None:
        """Write ``fingerprint.json`` and ``plan.json`` into ``folder``, atomically."""
        folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(
            folder / FINGERPRINT_FILE, json.dumps(self.fingerprint.to_json(), indent=1)
        )
        write_text_atomic(folder / PLAN_FILE, json.dumps(self.plan, indent=1))


def memory_budget(memory_gb: float | None, device_type: str) -> int:
    """Bytes training may use: ``memory_gb``, else half the machine's memory on the CPU (the
    rest is for data loading, caching and the system) or the GPU's memory on CUDA."""
    if memory_gb is not None:
        return int(memory_gb * 2**30)
    if device_type == "cuda":
        import torch

        return int(torch.cuda.get_device_properties(0).total_memory * 0.9)
    from medseg.pipelines.resources import total_memory

    total = total_memory()
    return total // 2 if total else 8 * 2**30


def _patch_dims(config: Config, index: DatasetIndex) -> int:
    patch = config.transforms.patch_size
    if patch != "auto":
        return len(patch)
    return 2 if config.network.name in TWO_D_ONLY else index.spatial_dims


def _memory_limit(budget: int, device_type: str) -> int:
    """The budget, or less when the device has less free now (a run may share the machine)."""
    import torch

    from medseg.pipelines.resources import device_memory

    free = device_memory(torch.device(device_type))
    return budget if free is None else min(budget, free)


def _too_large(
    choice: rules.NetworkSpec,
    median: list[int],
    grid: list[float],
    need: int,
    patch: list[int],
    patches: int,
    limit: int,
) -> str:
    """The one-line refusal of a training step of ``need`` bytes over ``limit``."""
    try:
        largest, _, _ = rules.plan_patch(choice, median, grid, limit, patches=patches)
        advice = f"the largest patch that fits is about {largest}"
    except ConfigError:
        advice = f"even a {rules.MIN_PATCH_SIZE}-voxel patch does not fit"
    return (
        f"transforms.patch_size {patch}: a training step of {patches} patches needs about "
        f"{need / 2**30:.2f} GB, {limit / 2**30:.2f} GB is available; {advice} (or lower "
        "train.batch_size or transforms.samples_per_case)"
    )


def plan_run(
    config: Config, index: DatasetIndex, train_cases: list[Case], *, device_type: str = "cpu"
) -> PlannedRun:
    """Fingerprint ``train_cases`` and resolve each of ``config``'s ``auto`` choices.

    Returns the resolved config (no ``auto`` left: spacing, normalisation, foreground crop,
    CT window, patch, batch and UNet++ pooling), the plan (what was decided, from what, and
    the memory it needs) and the fingerprint. Raises ``ConfigError`` (exit 2) with fewer
    than ``rules.MIN_CASES`` labelled cases or a memory budget too small for any patch.
    """
    labelled = [case for case in train_cases if case.label is not None]
    if len(labelled) < rules.MIN_CASES:
        raise ConfigError(
            f"{index.root}: {len(labelled)} labelled training cases; planning needs at least "
            f"{rules.MIN_CASES}"
        )
    fingerprint = fingerprint_dataset(index, labelled)
    settings = config.transforms
    decided: dict[str, str] = {}

    def choose(key: str, given: Any, planned: Any) -> Any:
        auto = isinstance(given, str) and given == "auto"
        decided[key] = "plan" if auto else "config"
        return planned() if auto else given

    modality = settings.modality or index.modality
    spacing = choose("spacing", settings.spacing, lambda: rules.target_spacing(fingerprint))
    normalization = choose(
        "normalization", settings.normalization, lambda: rules.normalization(fingerprint)
    )
    crop = choose(
        "foreground_crop",
        settings.foreground_crop,
        lambda: normalization in ("ct_window", "zscore_body", "zscore_nonzero"),
    )
    ct_stats: dict[str, float] = {}
    window = settings.ct_window
    if normalization == "ct_window":
        fitted = None if window == "auto" else window
        ct_stats = rules.ct_statistics(fingerprint.samples[index.channels[0]]["foreground"], fitted)
        window = [round(ct_stats["window_low"], 2), round(ct_stats["window_high"], 2)]

    dims = _patch_dims(config, index)
    slices = settings.slices
    choice = rules.NetworkSpec(
        name=config.network.name,
        preset=config.network.preset,
        options=dict(config.network.options),
        in_channels=len(index.channels) * slices,
        out_channels=index.labels.out_channels,
        spatial_dims=dims,
    )
    grid = list(spacing) if spacing else [float(s) for s in np.median(fingerprint.spacings, 0)]
    median = rules.median_shape(fingerprint, spacing, crop and normalization != "ct_window")
    budget = memory_budget(config.train.memory_gb, device_type)
    plan_pooling = config.network.pooling == "auto" and "strides" not in choice.options
    if settings.patch_size == "auto":
        decided["patch_size"] = "plan"
        patch, options, _ = rules.plan_patch(
            choice, median[:dims], grid[:dims], budget, plan_pooling=plan_pooling
        )
    else:
        decided["patch_size"] = "config"
        patch = list(settings.patch_size)
        options = rules.network_options(choice, patch, grid[:dims], plan_pooling)
    decided["network.options"] = "plan" if options != choice.options else "config"
    dataset_voxels = (
        math.prod(median[:dims])
        * len(labelled)
        * (median[2] if dims == 2 and len(median) == 3 else 1)
    )
    batch = choose(
        "batch_size",
        config.train.batch_size,
        lambda: rules.plan_batch(
            choice,
            options,
            patch,
            budget,
            dataset_voxels,
            settings.samples_per_case,
            len(train_cases),
        ),
    )
    patches_per_step = batch * settings.samples_per_case
    resolved = config.model_copy(
        update={
            "transforms": settings.model_copy(
                update={
                    "modality": modality,
                    "spacing": spacing,
                    "normalization": normalization,
                    "foreground_crop": crop,
                    "ct_window": window,
                    "patch_size": patch,
                }
            ),
            "train": config.train.model_copy(update={"batch_size": batch}),
            "network": config.network.model_copy(update={"options": options, "pooling": "fixed"}),
        }
    )
    need = rules.training_bytes(choice, options, patch, patches_per_step)
    plan = {
        "version": rules.PLAN_VERSION,
        "cases": len(labelled),
        "device": device_type,
        "memory_budget_gb": round(budget / 2**30, 2),
        "spacing": spacing,
        "median_shape": median,
        "normalization": normalization,
        "foreground_crop": crop,
        "ct_window": window if normalization == "ct_window" else None,
        "patch_size": patch,
        "roi_size": patch,
        "batch_size": batch,
        "patches_per_step": patches_per_step,
        "memory_estimate_gb": round(need / 2**30, 3),
        "network": {"name": choice.name, "preset": choice.preset, "options": options},
        "decided_by": decided,
    }
    limit = _memory_limit(budget, device_type)
    if need > limit:
        raise ConfigError(
            _too_large(choice, median[:dims], grid[:dims], need, patch, patches_per_step, limit)
            + f" ({plan['memory_budget_gb']:.1f} GB budget, train.memory_gb)"
        )
    logger.debug(
        "plan: spacing %s, %s, patch %s, batch %d (about %.2f GB of %.2f GB)",
        spacing,
        normalization,
        patch,
        batch,
        plan["memory_estimate_gb"],
        plan["memory_budget_gb"],
    )
    return PlannedRun(resolved, plan, fingerprint, ct_stats)


def plan_dataset(config: Config, output: Path) -> PlannedRun:
    """``medseg plan``: fingerprint every case of ``config``'s dataset, plan its ``auto``
    choices on the config's device and write both files into ``output``. Raises
    ``ConfigError`` for an output inside the dataset (planning never writes into the data),
    unusable cases, too few cases or a budget too small for any patch."""
    from medseg.datasets import discover

    root = Path(config.data.root)
    if Path(output).resolve().is_relative_to(root.resolve()):
        raise ConfigError(f"{output}: inside the dataset {root}; write the plan elsewhere")
    index = discover(config.data.layout, root, validate=True)
    if index.problems:
        raise ConfigError(f"{index.problems[0]} ({len(index.problems)} unusable cases)")
    device_type = "cpu" if config.train.device in ("auto", "cpu") else "cuda"
    planned = plan_run(config, index, index.cases, device_type=device_type)
    planned.write(Path(output))
    return planned
