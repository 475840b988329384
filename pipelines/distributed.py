"""Data-parallel training under ``torchrun``: process group set-up, rank helpers, reductions.

``torchrun --nproc_per_node N -m medseg train ...`` sets RANK, LOCAL_RANK and WORLD_SIZE;
without them everything here is a single-process no-op.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ProcessInfo:
    """This process's rank, local rank and the world size (1 without torchrun)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Whether this process logs, validates, writes checkpoints and talks to MLflow."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether several processes train together."""
        return self.world_size > 1


def process_info() -> ProcessInfo:
    """Read RANK, LOCAL_RANK and WORLD_SIZE as torchrun sets them."""
    return ProcessInfo(
        rank=int(os.environ.get("RANK", 0)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
    )


@contextlib.contextmanager
def process_group(info: ProcessInfo, device: torch.device) -> Iterator[None]:
    """Join the process group for the duration (NCCL on CUDA, gloo on CPU) when distributed."""
    if not info.distributed or dist.is_initialized():
        yield
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)
    try:
        yield
    finally:
        dist.destroy_process_group()


def mean_across_ranks(value: float, device: torch.device) -> float:
    """The mean of ``value`` over all ranks (itself when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item()) / dist.get_world_size()


def broadcast_from_main(value: float, device: torch.device) -> float:
    """Rank 0's ``value`` on every rank (itself when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(tensor, src=0)
    return float(tensor.item())


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
