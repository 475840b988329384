"""Training checkpoints: loaded with ``torch.load(weights_only=True)``, written atomically."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from medseg.errors import ConfigError
from medseg.files import write_atomic


def save_checkpoint(path: Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (tensors, numbers, strings, lists and dicts only) atomically."""
    return write_atomic(path, lambda temporary: torch.save(state, temporary))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint without unpickling code; ``ConfigError`` when missing or unsafe.

    A file holding anything but tensors and plain containers (a crafted pickle, say) is
    refused by ``weights_only=True`` and reported, never executed.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).splitlines()[0]
        raise ConfigError(f"{path}: refused, not a plain-data checkpoint ({reason})") from error
    except (RuntimeError, EOFError, OSError) as error:
        raise ConfigError(f"{path}: unreadable checkpoint ({error})") from error
    if not isinstance(state, dict) or "network" not in state:
        raise ConfigError(f"{path}: not a medseg checkpoint (no network weights)")
    return state
