"""Backends: the sliding-window forward on ONNX Runtime, OpenVINO and bf16 autocast,
each against PyTorch float32, for every network's small (or ``--preset tiny``) preset.

Each network is built untrained and seeded (``_common.model_dir``) and prepared as
``medseg predict`` prepares it (``medseg.pipelines.backends.prepare_network``: torch runs
the channels-last copy, the other backends medseg's cached ONNX export). Speed: one
forward of a batch of windows as ``medseg predict`` sends them (2 windows of the roi),
every backend in turn, the order rotating each repeat so load on the shared machine falls
on all of them; the ratio to torch is the median of the per-repeat ratios (the forward is
97 % of a case's sliding-window time). Agreement: one ``sliding_window_predict`` pass
(Gaussian blending, overlap 0.25) per backend over a smooth random volume normalised as
MRI or CT would be, BraTS-size (4x240x240x155) and LiTS-size (1x512x512x48); the share of
voxels whose label (argmax of the logits) equals torch's. ``--crop`` cuts both volumes
(a loaded 2-core machine). ``torch-bf16`` is torch under CPU autocast to bfloat16,
``openvino-bf16`` OpenVINO compiled for bf16 (both need AMX or AVX-512 BF16). The
export (once per network and size, cached) is timed separately.

    .venv/bin/python benchmarks/backends.py
    .venv/bin/python benchmarks/backends.py --crop 96 96 32 --networks unetpp
    .venv/bin/python benchmarks/backends.py --preset tiny   # what ``auto`` does for tiny ones
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from _common import header, markdown_table, median, model_dir

TARGET_AGREEMENT = 0.999


@dataclass(frozen=True)
class Network:
    """A network to measure: registry name, preset, roi (2D roi: slice by slice)."""

    name: str
    preset: str
    roi: tuple[int, ...]


NETWORKS = {
    "small": [
        Network("unetpp", "small", (64, 64, 64)),
        Network("hdenseunet", "small", (128, 128, 12)),
        Network("swin_unetr", "small", (64, 64, 64)),
        Network("att_swinunet", "small", (224, 224)),
    ],
    # the rois benchmarks/compute_efficiency.py gives the tiny presets
    "tiny": [
        Network("unetpp", "tiny", (64, 64, 64)),
        Network("hdenseunet", "tiny", (128, 128, 8)),
        Network("swin_unetr", "tiny", (64, 64, 64)),
        Network("att_swinunet", "tiny", (64, 64)),
    ],
}
SIZES = {"brats": (4, 240, 240, 155), "lits": (1, 512, 512, 48)}
# A liver window in HU, as medseg train fits one (the volumes here are already normalised,
# so it only has to be a valid model: the export describes it).
CT_INTENSITY = {"window_low": -100.0, "window_high": 240.0, "mean": 90.0, "std": 60.0}


def cpu_capability() -> str:
    """torch's CPU capability and the CPU's AVX/bf16/AMX flags."""
    from medseg.pipelines.cpu import cpu_features

    return cpu_features().describe()


def smooth_volume(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """``(1, C, *spatial)`` float32: blurred noise plus bright spheres, z-scored per channel,
    so windows hold structure as preprocessed scans do (not white noise)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    channels, *spatial = shape
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in spatial], indexing="ij"))
    volume = np.empty(shape, dtype=np.float32)
    for channel in range(channels):
        field = gaussian_filter(rng.standard_normal(spatial).astype(np.float32), sigma=4)
        for _ in range(3):
            centre = rng.uniform(-0.6, 0.6, size=(len(spatial),) + (1,) * len(spatial))
            field += 3 * field.std() * (((grid - centre) ** 2).sum(0) < 0.04)
        volume[channel] = (field - field.mean()) / field.std()
    return torch.from_numpy(volume)[None]


def prepare(network: Network, layout: str, backend: str, folder: Path) -> tuple[object, float]:
    """The prepared network for ``backend`` and seconds taken (``torch-bf16``: the torch one,
    run under autocast; ``openvino-bf16``: OpenVINO compiled for bf16)."""
    from medseg.pipelines.model_dir import open_model
    from medseg.pipelines.prediction.backends import prepare_network

    directory = folder / f"{network.name}-{network.preset}-{layout}"
    if not directory.exists():
        model_dir(
            directory,
            layout=layout,
            network=network.name,
            preset=network.preset,
            roi_size=network.roi,
            overlap=0.25,
            sw_batch_size=2,
            intensity=CT_INTENSITY if layout == "lits" else None,
        )
    config, loaded = open_model(directory)
    started = time.perf_counter()
    runtime = backend.removesuffix("-bf16")
    precision = torch.bfloat16 if backend.endswith("-bf16") else None
    prepared = prepare_network(config, loaded, torch.device("cpu"), runtime, precision=precision)
    return prepared, time.perf_counter() - started


def one_pass(prepared: object, image: torch.Tensor, roi: tuple[int, ...], backend: str):
    """The label map (argmax over channels) of one sliding-window pass."""
    from medseg.pipelines.inference import sliding_window_predict

    logits = sliding_window_predict(
        prepared,
        image,
        roi_size=roi,
        overlap=0.25,
        sw_batch_size=2,
        mode="gaussian",
        device=torch.device("cpu"),
        precision=torch.bfloat16 if backend == "torch-bf16" else None,
    )
    return logits.argmax(1).to(torch.uint8)


def forward_seconds(prepared: object, windows: torch.Tensor, backend: str) -> float:
    """Seconds of one forward of ``windows``."""
    started = time.perf_counter()
    with torch.inference_mode():
        if backend == "torch-bf16":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                prepared(windows)
        else:
            prepared(windows)
    return time.perf_counter() - started


def measure(network: Network, layout: str, shape: tuple, args, folder: Path) -> list[list]:
    """Rows of the table for ``network``: forwards on ``layout``'s channels, agreement on
    one volume of ``shape``."""
    prepared, prepare_seconds = {}, {}
    for backend in args.backends:
        try:
            prepared[backend], prepare_seconds[backend] = prepare(network, layout, backend, folder)
        except Exception as error:  # a backend that cannot export this network: reported
            print(f"  {network.name} {layout} {backend}: unavailable ({error})", flush=True)
    names = list(prepared)
    windows = smooth_volume((shape[0], *network.roi), seed=1).expand(2, -1, *network.roi)
    windows = windows.contiguous()
    for name in names:  # first calls: kernel selection, allocation
        forward_seconds(prepared[name], windows, name)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    ratios: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(args.repeats):
        order = names[repeat % len(names) :] + names[: repeat % len(names)]
        timed = {name: forward_seconds(prepared[name], windows, name) for name in order}
        for name in names:
            seconds[name].append(timed[name])
            ratios[name].append(timed[name] / timed["torch"])
    image = smooth_volume(shape, seed=0)
    labels = {name: one_pass(prepared[name], image, network.roi, name) for name in names}
    rows = []
    for name in names:
        agreement = (labels[name] == labels["torch"]).float().mean().item()
        rows.append(
            [
                f"{network.name} {network.preset}",
                "x".join(map(str, shape)),
                name,
                median(seconds[name]),
                f"{median(ratios[name]):.2f}x",
                f"{100 * agreement:.3f} %",
                prepare_seconds[name],
            ]
        )
        print(f"  {rows[-1]}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", nargs="*", default=[n.name for n in NETWORKS["small"]])
    parser.add_argument("--preset", choices=list(NETWORKS), default="small")
    parser.add_argument("--sizes", nargs="*", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--crop", type=int, nargs=3, help="cut both volumes to X Y Z at most")
    parser.add_argument(
        "--backends",
        nargs="*",
        default=["torch", "onnxruntime", "openvino", "torch-bf16", "openvino-bf16"],
    )
    parser.add_argument("--repeats", type=int, default=3, help="alternated forwards per backend")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (all sides)")
    args = parser.parse_args()
    if "torch" not in args.backends:
        args.backends.insert(0, "torch")
    torch.set_num_threads(args.threads)
    header("Backends: sliding-window forward against PyTorch float32", args.threads)
    print(f"CPU: {cpu_capability()}")
    print(f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}\n")
    rows = []
    with tempfile.TemporaryDirectory(prefix="medseg-backends-") as scratch:
        # the exports are cached in the scratch folder, not in the user's cache
        os.environ["XDG_CACHE_HOME"] = scratch
        for network in [n for n in NETWORKS[args.preset] if n.name in args.networks]:
            for layout in args.sizes:
                shape = SIZES[layout]
                if args.crop:
                    shape = (shape[0], *map(min, shape[1:], args.crop))
                rows += measure(network, layout, shape, args, Path(scratch))
    columns = ["network", "volume", "backend", "s/forward", "x torch", "labels = torch"]
    print()
    print(markdown_table([*columns, "prepare s"], rows))
    print(
        f"\nroi: {', '.join(f'{n.name} {n.roi}' for n in NETWORKS[args.preset])} (2D: slice "
        f"by slice), 2 windows per forward; s/forward: median of "
        f"{args.repeats} alternated forwards; x torch: median of the per-repeat ratios; "
        f"labels: argmax of the logits of one sliding-window pass over the volume (overlap "
        f"0.25, Gaussian blending); prepare s: export and compile (torch: channels-last copy)."
    )
    for row in rows:
        agrees = float(row[5].split()[0]) / 100 >= TARGET_AGREEMENT
        print(f"{'AGREES' if agrees else 'DIFFERS'}: {row[0]} {row[1]} {row[2]} ({row[5]})")


if __name__ == "__main__":
    main()
