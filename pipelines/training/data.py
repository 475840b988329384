"""Training and validation data: cached preprocessing, per-sample seeded augmentation.

Each sample's random augmentation is seeded from (run seed, epoch, case index), so it is
the same whichever rank, worker or position draws it: a resumed run repeats exactly what
the uninterrupted run would have done, and a data-parallel run sees the very patches a
single process would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset, Dataset, PersistentDataset
from torch.utils.data import DistributedSampler


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed for case ``index`` at ``epoch`` of a run seeded with ``seed``."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class SeededDataset(torch.utils.data.Dataset):
    """Wraps a MONAI dataset so item ``i`` is augmented from ``sample_seed(seed, epoch, i)``.

    ``set_epoch`` selects the epoch. Items are whatever the wrapped dataset returns (a list
    of patch dicts for multi-sample crops).
    """

    def __init__(self, dataset: Any, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the augmentation of ``epoch`` from now on."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        self.dataset.transform.set_random_state(seed=sample_seed(self.seed, self.epoch, index))
        return self.dataset[index]


def cached_dataset(cases: list[dict], transform: Any, cache: str, cache_dir: Path) -> Any:
    """A MONAI dataset caching the deterministic steps in memory, on disk, or not at all."""
    if cache == "memory":
        return CacheDataset(cases, transform, progress=False)
    if cache == "disk":
        return PersistentDataset(cases, transform, cache_dir=cache_dir)
    return Dataset(cases, transform)


def training_loader(
    dataset: SeededDataset,
    *,
    batch_size: int,
    rank: int,
    world_size: int,
    seed: int,
    num_workers: int,
) -> tuple[Any, DistributedSampler]:
    """A loader of this rank's share of each global batch, and its sampler (``set_epoch``).

    The sampler shuffles with ``seed`` and the epoch the same way on every rank, so rank
    ``r`` of ``N`` takes every N-th case of the one global order; ``batch_size`` is global
    and must divide by the world size.
    """
    from monai.data import DataLoader

    sampler = DistributedSampler(
        dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True
    )
    loader = DataLoader(
        dataset,
        batch_size=batch_size // world_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=len(dataset) // world_size > batch_size // world_size,
    )
    return loader, sampler
