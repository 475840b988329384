"""Where the sliding-window forward runs on the CPU: PyTorch, ONNX Runtime or OpenVINO.

medseg's preprocessing, MONAI's ``sliding_window_inference`` and the inversion stay as they
are; only the function called on each batch of windows changes. For ``onnxruntime`` and
``openvino`` that function is a session over medseg's own ONNX export (``export_network``,
checked against the torch forward to ``export.TOLERANCE``), made on first use and cached
under ``export_cache_dir()`` in a folder named by the SHA-256 of the network's weights,
its spec and roi, so the model directory is never written to. The export is written to a
temporary name and renamed, so concurrent runs that both miss the cache each finish with a
complete file (the last rename wins; both are the same network). Each runtime's check of
the file against torch's forward is recorded beside it (``_check_record``) and not run
again.

``auto`` takes, per network, the backend that ``benchmarks/backends.py`` measured fastest
among those whose labels agree with torch on >= 99.9 % of voxels (``AUTO_BACKEND``), for
the small presets and up (tiny ones keep torch, ``AUTO_TORCH_PRESETS``, until a run with
that backend named has cached their export); when that
backend is not installed or cannot export the network it falls back to torch and logs
why. Other devices than the CPU always run torch.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from medseg.errors import ConfigError, MedsegError
from medseg.networks import abilities, as_prunable
from medseg.networks.inference_layout import inference_network
from medseg.pipelines.model_dir import ModelConfig

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnxruntime", "openvino")
# Measured by benchmarks/backends.py (see benchmarks/README.md, section 11): per network the
# fastest backend whose labels agreed with torch on >= 99.9 % of voxels (small presets,
# a BraTS-size crop): OpenVINO for all four.
AUTO_BACKEND: dict[str, str] = {
    "unetpp": "openvino",
    "hdenseunet": "openvino",
    "swin_unetr": "openvino",
    "att_swinunet": "openvino",
}
# auto keeps torch for these presets unless their export is already cached: their forward
# is just as much faster on OpenVINO (0.03-0.34x torch's, benchmarks/README.md section 11),
# but making the export took 1-6 minutes there, more than a few cases' sliding windows take.
AUTO_TORCH_PRESETS = frozenset({"tiny"})
# Largest absolute logit difference from torch a runtime may show on its check window;
# float32 runtimes measured 1e-6 to 1e-5 (export.TOLERANCE is 1e-4 for the file itself).
RUNTIME_TOLERANCE = 1e-3
# The same check in bf16, as root-mean-square difference over that of the logits: bf16
# keeps 8 bits of mantissa, and OpenVINO's bf16 UNet++ small measured 0.016 on it; a wrong
# export or runtime is off by about the logits' own size (1.0).
BF16_RUNTIME_TOLERANCE = 0.1
_PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
# The reduced precisions each runtime backend runs (ONNX Runtime's CPU kernels are fp32).
_PRECISIONS: dict[str, tuple[torch.dtype, ...]] = {"openvino": (torch.bfloat16,)}
_EXTRAS = {"onnxruntime": "export", "openvino": "fast"}


def export_cache_dir() -> Path:
    """The folder cached ONNX exports live in: ``$XDG_CACHE_HOME/medseg/exports``, with
    ``~/.cache`` when ``XDG_CACHE_HOME`` is unset."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "medseg" / "exports"


def export_key(config: ModelConfig, network: nn.Module, prune_level: int | None) -> str:
    """SHA-256 (hex) of what an export depends on: every weight and buffer (names, dtypes,
    shapes, bytes), the network spec, the roi and the prune level, and torch's version."""
    digest = hashlib.sha256()
    described = [
        config.network.model_dump_json(),
        repr(list(config.inference.roi_size)),
        repr(prune_level),
        torch.__version__,
    ]
    digest.update("\n".join(described).encode())
    for name, tensor in network.state_dict().items():
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class RuntimeNetwork(nn.Module):
    """A network run by another runtime, called as the torch network is: windows
    ``(B, C_in, *roi)`` float32 on the CPU -> logits ``(B, C_out, *roi)`` float32.

    ``run`` maps a C-contiguous float32 array to a new float32 array. Forward options
    (UNet++'s ``prune_level``) are accepted and ignored: the file already is the network
    of that level. ``levels`` mirrors UNet++'s attribute (None for other networks).
    """

    def __init__(
        self, run: Callable[[np.ndarray], np.ndarray], backend: str, levels: int | None
    ) -> None:
        super().__init__()
        self._run = run
        self.backend = backend
        self.levels = levels

    def forward(self, windows: torch.Tensor, **options: object) -> torch.Tensor:
        """Logits for ``windows`` (see class doc)."""
        array = np.ascontiguousarray(windows.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self._run(array))


def require_backend(backend: str, device: torch.device) -> None:
    """Refuse, with a ``ConfigError`` saying what to do, an unknown backend, a non-torch
    backend on a device other than the CPU, or one whose package is not installed."""
    if backend not in BACKENDS:
        raise ConfigError(f"backend {backend!r}: use {', '.join(BACKENDS)}")
    if backend in ("auto", "torch"):
        return
    if device.type != "cpu":
        raise ConfigError(f"backend {backend} runs on the CPU only; use --device cpu")
    if not _installed(backend):
        raise ConfigError(
            f"backend {backend} needs the {_PACKAGES[backend]} package, which is not "
            f"installed; install it with: pip install 'medseg[{_EXTRAS[backend]}]'"
        )


def _installed(backend: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(_PACKAGES[backend]) is not None


def prepare_network(
    config: ModelConfig,
    network: nn.Module,
    device: torch.device,
    backend: str = "torch",
    *,
    prune_level: int | None = None,
    precision: torch.dtype | None = None,
) -> nn.Module:
    """``network`` ready for sliding-window inference on ``device`` with ``backend``.

    ``torch``: ``inference_network`` (on the CPU its channels-last copy); ``onnxruntime``
    or ``openvino``: a ``RuntimeNetwork`` over the cached ONNX export of ``network`` (of
    head ``prune_level`` for UNet++); ``auto``: ``AUTO_BACKEND``'s choice for the network,
    torch on other devices than the CPU, for an autocast ``precision`` that choice does
    not run (OpenVINO runs bf16, ONNX Runtime fp32 only), for a preset in
    ``AUTO_TORCH_PRESETS`` whose export is not cached yet, or when that choice is
    unavailable (logged). Raises ``ConfigError`` (see ``require_backend``; also for a
    ``precision`` the named backend does not run) or ``ExportError`` for a named backend
    that cannot run the network.
    """
    require_backend(backend, device)
    if not runs_precision(backend, precision):
        raise ConfigError(
            f"backend {backend} runs fp32; --precision applies to torch (and bf16 to openvino)"
        )
    network = network.to(device).eval()
    chosen = backend
    if backend == "auto":
        on_cpu = device.type == "cpu"
        chosen = AUTO_BACKEND.get(config.network.name, "torch") if on_cpu else "torch"
        if not runs_precision(chosen, precision):
            chosen = "torch"
        tiny = config.network.preset in AUTO_TORCH_PRESETS
        if chosen != "torch" and tiny and not _export_path(config, network, prune_level).is_file():
            logger.debug(
                "backend auto: torch for a %s preset (`--backend %s` makes its export "
                "once; later runs of auto use it)",
                config.network.preset,
                chosen,
            )
            chosen = "torch"
        if chosen != "torch" and not _installed(chosen):
            logger.info("backend auto: %s is not installed; running torch", _PACKAGES[chosen])
            chosen = "torch"
    if chosen == "torch":
        return inference_network(network, device)
    try:
        return _runtime_network(config, network, chosen, prune_level, precision)
    except MedsegError as error:
        if backend != "auto":
            raise
        logger.warning(
            "backend auto: %s cannot run %s (%s); running torch", chosen, config.network.name, error
        )
        return inference_network(network, device)


def runs_precision(backend: str, precision: torch.dtype | None) -> bool:
    """Whether ``backend`` (``auto`` for whichever it picks) runs windows at ``precision``
    (None: fp32): torch and ``auto`` run any, the runtimes what ``_PRECISIONS`` lists."""
    return (
        precision is None
        or backend in ("torch", "auto")
        or precision in _PRECISIONS.get(backend, ())
    )


def _export_path(config: ModelConfig, network: nn.Module, prune_level: int | None) -> Path:
    """Where ``network``'s cached ONNX export is, or will be made."""
    from medseg.pipelines.export.export import FILES

    return export_cache_dir() / export_key(config, network, prune_level) / FILES["onnx"]


def _runtime_network(
    config: ModelConfig,
    network: nn.Module,
    backend: str,
    prune_level: int | None,
    precision: torch.dtype | None,
) -> RuntimeNetwork:
    from medseg.pipelines.export.export import export_network

    path = _export_path(config, network, prune_level)
    folder = path.parent
    if not path.is_file():
        logger.info("exporting %s to %s for %s", config.network.name, path, backend)
        try:
            export_network(config, network, "onnx", folder, prune_level=prune_level)
        except OSError as error:
            raise ConfigError(
                f"{folder}: cannot write the {backend} export there ({error.strerror}); "
                "set XDG_CACHE_HOME to a writable folder"
            ) from error
    run = _SESSIONS[backend](path, precision)
    passed = _check_record(path, backend, precision)
    if not passed.is_file():
        _check_against_torch(run, network, config, backend, prune_level, precision)
        try:
            passed.touch()
        except OSError:  # a cache shared read-only: check again next time
            logger.debug("cannot record the passed check in %s", passed.parent)
    levels = as_prunable(network).levels if abilities(config.network.name).prunable else None
    return RuntimeNetwork(run, backend, levels)


def _check_record(path: Path, backend: str, precision: torch.dtype | None) -> Path:
    """The empty file, beside the export ``path``, whose presence says that ``backend``'s
    installed version passed ``_check_against_torch`` on that export at ``precision`` on a
    CPU like this one; later runs skip the check (a torch and a runtime forward, about 5 %
    of a BraTS case's prediction). Named by what the result depends on, so a runtime
    upgrade or another CPU sharing the cache checks again."""
    import importlib.metadata

    from medseg.pipelines.cpu import cpu_features

    described = [
        backend,
        importlib.metadata.version(_PACKAGES[backend]),
        str(precision),
        cpu_features().describe(),
    ]
    digest = hashlib.sha256("\n".join(described).encode()).hexdigest()[:16]
    return path.parent / f"checked-{backend}-{digest}"


def _check_against_torch(
    run: Callable[[np.ndarray], np.ndarray],
    network: nn.Module,
    config: ModelConfig,
    backend: str,
    prune_level: int | None,
    precision: torch.dtype | None,
) -> None:
    """Refuse (``ExportError``) a runtime whose logits on one random window differ from
    torch's fp32 ones by more than ``RUNTIME_TOLERANCE`` (largest difference), or in bf16
    by more than ``BF16_RUNTIME_TOLERANCE`` (root-mean-square difference over that of the
    logits): the export was checked with ONNX Runtime, this checks the runtime that will
    serve it, at the precision it will serve."""
    from medseg.pipelines.export.export import ExportError

    generator = torch.Generator().manual_seed(0)
    window = torch.randn(
        (1, config.network.in_channels, *config.inference.roi_size), generator=generator
    )
    options = {} if prune_level is None else {"prune_level": prune_level}
    with torch.inference_mode():
        expected = network(window, **options).numpy()
    difference = run(window.numpy()) - expected
    if precision is None:
        error, tolerance, measure = float(np.abs(difference).max()), RUNTIME_TOLERANCE, ""
    else:
        scale = max(float(np.sqrt(np.mean(np.square(expected)))), 1e-6)
        error = float(np.sqrt(np.mean(np.square(difference)))) / scale
        tolerance, measure = BF16_RUNTIME_TOLERANCE, " (relative RMS, bf16)"
    if not error <= tolerance:
        raise ExportError(
            f"{backend} differs from medseg's forward by {error:.3g}{measure} on a check "
            f"window (tolerance {tolerance:g})"
        )


def _onnxruntime_session(
    path: Path, precision: torch.dtype | None
) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime

    from medseg.pipelines.export.preprocessing_json import INPUT_NAME, OUTPUT_NAME

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    # Same waiting as torch's OpenMP threads: spin only when OMP_WAIT_POLICY allows it.
    if os.environ.get("OMP_WAIT_POLICY", "").lower() == "passive":
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = _open(
        path,
        lambda: onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        ),
    )

    def run(windows: np.ndarray) -> np.ndarray:
        return session.run([OUTPUT_NAME], {INPUT_NAME: windows})[0]

    return run


def import_openvino() -> Any:
    """The ``openvino`` module, imported without its model converter.

    ``import openvino`` also imports ``openvino.tools.ovc``, which on first import writes a
    client id under ``~/intel`` and sends a usage event to Google Analytics unless a consent
    file there says no. medseg compiles ONNX files and never uses the converter, and a
    clinical tool must not call out, so the converter is kept from loading during the import
    (and left importable afterwards for code of the user's own).
    """
    converter = "openvino.tools.ovc"
    blocked = converter not in sys.modules
    if blocked:
        sys.modules[converter] = None  # type: ignore[assignment]
    try:
        import openvino
    finally:
        if blocked and sys.modules.get(converter, False) is None:
            del sys.modules[converter]
    return openvino


def _openvino_session(
    path: Path, precision: torch.dtype | None
) -> Callable[[np.ndarray], np.ndarray]:
    openvino = import_openvino()
    properties = {
        "INFERENCE_NUM_THREADS": torch.get_num_threads(),
        # OpenVINO picks bf16 by itself on CPUs that have it; medseg's precision is explicit.
        "INFERENCE_PRECISION_HINT": "bf16" if precision == torch.bfloat16 else "f32",
        "PERFORMANCE_HINT": "LATENCY",
    }
    core = openvino.Core()
    compiled = _open(path, lambda: core.compile_model(str(path), "CPU", properties))
    request = compiled.create_infer_request()
    output = compiled.output(0)

    def run(windows: np.ndarray) -> np.ndarray:
        # The request reuses its output buffer at the next call: copy it out.
        return np.array(request.infer({0: windows})[output], dtype=np.float32, copy=True)

    return run


def _open(path: Path, load: Callable[[], Any]) -> Any:
    try:
        return load()
    except Exception as error:  # each runtime raises its own types for unreadable files
        text = str(error).strip().splitlines()
        raise ConfigError(
            f"{path}: cannot be loaded ({text[0] if text else type(error).__name__}); "
            "delete it to export the model again"
        ) from None


_SESSIONS = {"onnxruntime": _onnxruntime_session, "openvino": _openvino_session}
