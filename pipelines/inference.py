"""Sliding-window inference shared by validation during training, ``medseg predict`` and
``medseg prune``: MONAI's ``sliding_window_inference`` around a window predictor that adds
slice-by-slice 2D networks, mixed precision on CUDA and the reuse of empty windows."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference

from medseg.errors import ConfigError

if TYPE_CHECKING:
    from medseg.pipelines.model_dir import ModelConfig

logger = logging.getLogger(__name__)

PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
# Issue 24's rule: bf16 by default only where its labels equal fp32's on >= 99.9 % of voxels.
BF16_AGREEMENT = 0.999
# ... and only where it is faster: the networks whose bf16 forward was measured faster than
# fp32 on a CPU with AVX-512 BF16 on the backend ``auto`` runs them on (OpenVINO for small
# presets and up, torch for tiny ones until exported; benchmarks/README.md section 17).
CPU_BF16_FASTER = frozenset({"unetpp"})


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available else CPU; ``cpu``, ``cuda`` or ``cuda:N`` as named.

    Any other name, ``cuda`` without a GPU, or a GPU index this machine lacks is a
    ``ConfigError``.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {name!r}: use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but no CUDA GPU is available")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r}: this machine has {torch.cuda.device_count()} GPU(s)")
    return device


def bf16_runs_natively(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 in hardware: a CUDA GPU that supports it, or a
    CPU with AMX or AVX-512 BF16 (elsewhere bf16 is emulated, about 200x slower)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    from medseg.pipelines.cpu import cpu_features

    return cpu_features().native_bf16


def resolve_precision(
    name: str, device: torch.device, configs: Sequence[ModelConfig] = (), backend: str = "auto"
) -> torch.dtype | None:
    """The autocast dtype for ``name`` (``auto``, ``fp32``, ``fp16``, ``bf16``) on ``device``
    for the models ``configs`` run on ``backend`` (None: fp32).

    ``auto`` is bf16 on a CUDA GPU that has it, else fp16 on CUDA. On the CPU it is bf16
    where the CPU multiplies bf16 natively (``medseg.pipelines.cpu``), for networks whose
    bf16 forward was measured faster there (``CPU_BF16_FASTER``), and every model's labels
    under bf16 agreed with fp32's on at least ``BF16_AGREEMENT`` of its validation voxels
    (``inference.bf16_agreement``, measured after training), else fp32: autocast to bf16
    on a CPU without native bf16 ran 233x slower, and untrained or unmeasured models get no
    bf16 they were not shown to survive; ONNX Runtime runs fp32 only. ``bf16`` on the CPU
    is allowed where the CPU multiplies bf16 natively; fp16 on the CPU, and bf16 on one
    without AMX or AVX-512 BF16, are refused with a ``ConfigError``.
    """
    from medseg.pipelines.cpu import cpu_features
    from medseg.pipelines.prediction.backends import runs_precision

    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if bf16_runs_natively(device) else torch.float16
        agreements = [config.inference.bf16_agreement for config in configs]
        shown = (
            bool(agreements)
            and runs_precision(backend, torch.bfloat16)
            and all(
                agreement is not None and agreement >= BF16_AGREEMENT for agreement in agreements
            )
            and all(config.network.name in CPU_BF16_FASTER for config in configs)
        )
        if not (shown and bf16_runs_natively(device)):
            return None
        logger.info(
            "precision auto: bf16 (native on this CPU; the model's labels under bf16 equalled "
            "fp32's on >= %g %% of its validation voxels)",
            100 * BF16_AGREEMENT,
        )
        return torch.bfloat16
    if name not in PRECISIONS:
        raise ConfigError(f"precision {name!r}: use auto, fp32, fp16 or bf16")
    if PRECISIONS[name] is not None and device.type != "cuda":
        if name == "bf16" and bf16_runs_natively(device):
            return torch.bfloat16
        if name == "bf16":
            raise ConfigError(
                f"precision bf16 on this CPU ({cpu_features().describe()}) would be emulated, "
                "far slower than fp32; it needs AMX or AVX-512 BF16"
            )
        raise ConfigError(f"precision {name} needs a CUDA device; the CPU runs fp32 or bf16")
    return PRECISIONS[name]


@dataclass
class WindowCount:
    """How many windows a prediction ran, and how many of those were empty and reused."""

    windows: int = 0
    skipped: int = 0


class WindowPredictor(nn.Module):
    """The function ``sliding_window_inference`` calls on each batch of windows.

    Runs a 2D ``network`` slice by slice on windows one slice deep, under CUDA autocast
    when ``precision`` is set, and with ``skip_empty`` answers each window whose input is
    constant (every channel one value, as air or background is after normalisation) from
    a cache keyed by those values: a convolutional network gives every such window the same
    output, so the result equals running them all, at the cost of one. ``count`` tallies.
    """

    def __init__(
        self,
        network: nn.Module,
        *,
        slice_wise: bool = False,
        precision: torch.dtype | None = None,
        skip_empty: bool = False,
        count: WindowCount | None = None,
    ) -> None:
        super().__init__()
        self.network = network
        self.slice_wise = slice_wise
        self.precision = precision
        self.skip_empty = skip_empty
        self.count = count if count is not None else WindowCount()
        self._empty_outputs: dict[bytes, torch.Tensor] = {}

    def _run(self, windows: torch.Tensor, options: dict) -> torch.Tensor:
        inputs = windows[..., 0] if self.slice_wise else windows
        if self.precision is None:
            output = self.network(inputs, **options)
        else:
            with torch.autocast(device_type=windows.device.type, dtype=self.precision):
                output = self.network(inputs, **options)
        output = output.float()
        return output[..., None] if self.slice_wise else output

    def forward(self, windows: torch.Tensor, **options: object) -> torch.Tensor:
        """Logits ``(B, C_out, *roi)`` for windows ``(B, C_in, *roi)``."""
        self.count.windows += windows.shape[0]
        if not self.skip_empty:
            return self._run(windows, options)
        flat = windows.flatten(2)
        constant = (flat.amax(-1) == flat.amin(-1)).all(-1)
        keys = [
            flat[i, :, 0].cpu().numpy().tobytes() if constant[i] else b""
            for i in range(len(windows))
        ]
        todo = [i for i, key in enumerate(keys) if not key or key not in self._empty_outputs]
        outputs: list[torch.Tensor | None] = [None] * len(windows)
        if todo:
            computed = self._run(windows[todo], options)
            for position, index in enumerate(todo):
                outputs[index] = computed[position]
                if keys[index]:
                    self._empty_outputs[keys[index]] = computed[position]
        for index, key in enumerate(keys):
            if outputs[index] is None:
                outputs[index] = self._empty_outputs[key]
                self.count.skipped += 1
        return torch.stack(outputs)


def window_shape(roi_size: Sequence[int], spatial_dims: int) -> list[int]:
    """The window a sliding pass cuts from an image of ``spatial_dims`` axes: ``roi_size``,
    plus one slice when a 2D network runs slice by slice on a volume."""
    return [*roi_size, 1] if spatial_dims == len(roi_size) + 1 else list(roi_size)


def plain_tensor(image: Any) -> torch.Tensor:
    """``image`` (a MONAI ``MetaTensor`` or a tensor) as a plain tensor, without a copy: the
    windows and networks need no metadata, and slicing a MetaTensor carries it along."""
    return image.as_tensor() if isinstance(image, MetaTensor) else image


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
    precision: torch.dtype | None = None,
    skip_empty: bool = False,
    count: WindowCount | None = None,
    **forward_options: object,
) -> torch.Tensor:
    """Logits for a whole image with MONAI's ``sliding_window_inference``.

    ``image`` is ``(B, C, *spatial)`` float32 on any device; windows of ``roi_size`` run on
    ``device`` (default: the network's) and are blended (``mode``) into a CPU tensor
    ``(B, C_out, *spatial)`` float32, so only the windows occupy accelerator memory. A 2D
    ``roi_size`` on a volume runs the network slice by slice. ``precision`` is a CUDA
    autocast dtype; ``skip_empty`` reuses one answer for all constant windows (see
    ``WindowPredictor``); ``count`` receives the window tally; ``forward_options`` (such
    as UNet++'s ``prune_level``) go to every network call.
    """
    network.eval()
    if device is None:
        device = next(network.parameters()).device
    plain = plain_tensor(image)
    roi = list(roi_size)
    slice_wise = plain.ndim - 2 == len(roi) + 1
    if slice_wise:
        roi = [*roi, 1]
    predictor = WindowPredictor(
        network, slice_wise=slice_wise, precision=precision, skip_empty=skip_empty, count=count
    )
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
