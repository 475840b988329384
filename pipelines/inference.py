"""Sliding-window inference shared by validation during training and ``medseg predict``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.inferers import sliding_window_inference

from medseg.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available else CPU; ``cuda`` without a GPU is a ``ConfigError``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but no CUDA GPU is available")
    return torch.device(name)


class SliceWise(nn.Module):
    """Runs a 2D network on windows one slice deep: ``(B, C, X, Y, 1)`` -> ``(B, C', X, Y, 1)``."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, window: torch.Tensor, **options: object) -> torch.Tensor:
        return self.network(window[..., 0], **options)[..., None]


@torch.inference_mode()
def sliding_window_predict(
    network: nn.Module,
    image: torch.Tensor,
    *,
    roi_size: Sequence[int],
    overlap: float = 0.5,
    sw_batch_size: int = 2,
    mode: str = "gaussian",
    device: torch.device | None = None,
    **forward_options: object,
) -> torch.Tensor:
    """Logits for a whole image with MONAI's ``sliding_window_inference``.

    ``image`` is ``(B, C, *spatial)`` float32 on any device; windows of ``roi_size`` run on
    ``device`` (default: the network's) and are blended (``mode``) into a CPU tensor
    ``(B, C_out, *spatial)`` float32, so only the windows occupy accelerator memory. A 2D
    ``roi_size`` on a volume runs the network slice by slice. ``forward_options`` (such as
    UNet++'s ``prune_level``) go to every network call.
    """
    network.eval()
    if device is None:
        device = next(network.parameters()).device
    plain = image.as_tensor() if hasattr(image, "as_tensor") else image
    roi = list(roi_size)
    predictor = network
    if plain.ndim - 2 == len(roi) + 1:
        roi, predictor = [*roi, 1], SliceWise(network)
    return sliding_window_inference(
        plain.to(torch.float32),
        roi_size=roi,
        sw_batch_size=sw_batch_size,
        predictor=predictor,
        overlap=overlap,
        mode=mode,
        sw_device=device,
        device=torch.device("cpu"),
        **forward_options,
    )
