"""Compute efficiency: each network's forward GFLOP/s as a fraction of float32 matmul's.

The baseline is a square float32 matrix product (``torch.mm``) on this machine, measured in
the same process with the same number of intra-op threads, right before each network is
timed (the pairs alternate, so a change in machine load falls on both). A network's FLOPs
for one forward are counted by ``torch.utils.flop_counter.FlopCounterMode`` (convolutions,
matrix products and attention; 2 FLOPs per multiply-add; norms and activations are not
counted, so they only cost time). A single ``Conv3d`` is the convolutional reference.

Targets: issue #24's for the small and paper presets, >= 60 % of the matmul rate for the
convolutional networks (UNet++, H-DenseUNet), >= 40 % for Swin UNETR, >= 30 % for
Att-SwinU-Net; issue #12's for the tiny ones, >= 50 % (convolutional) and >= 35 % (Swin).

The networks are timed as ``medseg predict`` runs them on the CPU: a copy laid out
channels-last with its instance norms replaced (``medseg.networks.inference_layout``);
``--layout plain`` times the networks as built (NCHW / NCDHW, PyTorch's instance norm),
the Conv3d reference included.

``--backend openvino`` (or ``onnxruntime``) times the forward as ``medseg predict --backend``
runs it: each network is written as an untrained model directory (``_common.model_dir``:
BraTS's 4 channels in, or LiTS's 1 for the one-channel cases, 3 out) and prepared by
``medseg.pipelines.prediction.backends.prepare_network``, which exports it to ONNX (once,
into a scratch cache, not timed) and opens the runtime; FLOPs are those of the same torch
network. ``--backend auto`` is what ``medseg predict`` uses by default (OpenVINO for the
small presets, torch for the tiny ones).

Inputs are batches of 2 windows for the 3D networks, as ``medseg predict`` runs them
(``infer.sw_batch_size`` defaults to 2): with a batch of 1, PyTorch's CPU convolution
dispatch sends 3 x 3 x 3 convolutions whose N*C*D*H is at most 20480 (the deeper, narrower
layers here) to the unblocked ``slow_conv3d`` instead of oneDNN, which costs a 3D UNet++
or Swin UNETR about a fifth of its rate (``--profile`` shows the operators).

    .venv/bin/python benchmarks/compute_efficiency.py                 # about 3 minutes
    .venv/bin/python benchmarks/compute_efficiency.py --quick         # about a minute
    .venv/bin/python benchmarks/compute_efficiency.py --profile unetpp-small-3d
    .venv/bin/python benchmarks/compute_efficiency.py --backend auto --cases unetpp-small-3d
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

# The helpers sit beside this script (not in a package); Python puts the script's own
# folder first on ``sys.path``, so they import as a top-level module.
from _common import header, markdown_table, model_dir

TARGETS = {"conv": 0.60, "swin_unetr": 0.40, "att_swinunet": 0.30}
TINY_TARGETS = {"conv": 0.50, "swin_unetr": 0.35, "att_swinunet": 0.35}


@dataclass(frozen=True)
class Case:
    """One network to time: registry name, preset, spatial dims, channels in/out, input."""

    label: str
    network: str
    preset: str
    shape: tuple[int, ...]  # (B, C_in, *spatial)
    out_channels: int
    family: str  # "conv", "swin_unetr" or "att_swinunet": which target applies
    options: tuple[tuple[str, object], ...] = ()


CASES = [
    Case("unetpp-tiny-3d", "unetpp", "tiny", (2, 4, 64, 64, 64), 3, "conv"),
    Case("unetpp-small-3d", "unetpp", "small", (2, 4, 64, 64, 64), 3, "conv"),
    Case("unetpp-paper-2d", "unetpp", "paper", (4, 1, 96, 96), 1, "conv"),
    Case("hdenseunet-tiny", "hdenseunet", "tiny", (2, 1, 128, 128, 8), 3, "conv"),
    Case("hdenseunet-small", "hdenseunet", "small", (2, 1, 128, 128, 12), 3, "conv"),
    Case("swin_unetr-tiny", "swin_unetr", "tiny", (2, 4, 64, 64, 64), 3, "swin_unetr"),
    Case("swin_unetr-small", "swin_unetr", "small", (2, 4, 64, 64, 64), 3, "swin_unetr"),
    Case("att_swinunet-tiny", "att_swinunet", "tiny", (4, 3, 64, 64), 1, "att_swinunet"),
    Case("att_swinunet-small", "att_swinunet", "small", (1, 3, 224, 224), 1, "att_swinunet"),
]
CT_INTENSITY = {"window_low": -100.0, "window_high": 250.0, "mean": 80.0, "std": 60.0}
QUICK = {"unetpp-tiny-3d", "unetpp-paper-2d", "hdenseunet-tiny", "swin_unetr-tiny"}
QUICK |= {"att_swinunet-tiny"}


def build(case: Case, layout: str) -> torch.nn.Module:
    """The network of ``case`` in eval mode (seeded, untrained); a bare Conv3d for the
    reference case. With ``layout`` "predict", the channels-last copy that ``medseg predict``
    runs on the CPU."""
    from medseg.networks import build_network
    from medseg.networks.inference_layout import inference_network

    torch.manual_seed(0)
    if case.network == "conv3d":
        network = torch.nn.Conv3d(case.shape[1], case.out_channels, 3, padding=1).eval()
    else:
        network = build_network(
            case.network,
            spatial_dims=len(case.shape) - 2,
            in_channels=case.shape[1],
            out_channels=case.out_channels,
            preset=case.preset,
            **dict(case.options),
        ).eval()
    if layout == "predict":
        return inference_network(network, torch.device("cpu"))
    return network


def build_for_backend(
    case: Case, backend: str, folder: Path
) -> tuple[Callable[[torch.Tensor], object], torch.nn.Module, Case]:
    """``case``'s network as ``medseg predict --backend backend`` runs it on the CPU, the
    torch network it was made from (to count FLOPs on) and the case with the model's input
    channels (4, or 1 for a one-channel case)."""
    from medseg.pipelines.model_dir import open_model
    from medseg.pipelines.prediction.backends import prepare_network

    layout = "lits" if case.shape[1] == 1 else "brats"
    directory = folder / case.label
    model_dir(
        directory,
        layout=layout,
        # a CT model's export describes its intensity window; any fixed one will do here
        intensity=CT_INTENSITY if layout == "lits" else None,
        network=case.network,
        preset=case.preset,
        options=dict(case.options),
        roi_size=case.shape[2:],
        sw_batch_size=case.shape[0],
    )
    config, network = open_model(directory)
    prepared = prepare_network(config, network, torch.device("cpu"), backend)
    shape = (case.shape[0], config.network.in_channels, *case.shape[2:])
    return prepared, network.eval(), replace(case, shape=shape)


def count_flops(function: Callable[[], object]) -> int:
    """FLOPs of one call of ``function`` as ``FlopCounterMode`` counts them, with the CPU's
    flash attention counted as PyTorch counts its GPU kernels (its own table has no entry
    for it, so the attention networks' attention counted as 0 FLOPs before 2026-11-29)."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def cpu_flash_attention(query, key, value, *args, **kwargs) -> int:
        return sdpa_flop_count(query, key, value)

    cpu_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    counter = FlopCounterMode(display=False, custom_mapping={cpu_flash: cpu_flash_attention})
    with counter:
        function()
    return int(counter.get_total_flops())


def seconds_of(
    function: Callable[[], object], minimum: float, clock: Callable[[], float] = time.perf_counter
) -> float:
    """Seconds per call of ``function`` on ``clock``: calls repeated for at least
    ``minimum`` seconds."""
    calls, started = 0, clock()
    while True:
        function()
        calls += 1
        elapsed = clock() - started
        if elapsed >= minimum:
            return elapsed / calls


def matmul(size: int) -> tuple[Callable[[], object], int]:
    """A float32 ``size`` x ``size`` matrix product and its FLOPs (2 n^3)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    return (lambda: torch.mm(a, b)), 2 * size**3


def measure(
    case: Case,
    network: Callable[[torch.Tensor], object],
    counted: Callable[[torch.Tensor], object],
    repeats: int,
    minimum: float,
    size: int,
    clock: Callable[[], float] = time.perf_counter,
) -> dict:
    """GFLOP/s of ``network``'s forward on ``case``'s input (FLOPs counted on ``counted``,
    the same network in torch) and of the matmul timed just before it, ``repeats`` pairs."""
    inputs = torch.randn(*case.shape)
    product, product_flops = matmul(size)

    def forward() -> object:
        return network(inputs)

    with torch.inference_mode():
        flops = count_flops(lambda: counted(inputs))
        forward(), product()  # first calls: kernel selection and allocation
        rates, baseline = [], []
        for _ in range(repeats):
            baseline.append(product_flops / seconds_of(product, minimum, clock) / 1e9)
            rates.append(flops / seconds_of(forward, minimum, clock) / 1e9)
    return {
        "flops": flops,
        "rate": statistics.median(rates),
        "matmul": statistics.median(baseline),
    }


def profile(case: Case, layout: str, rows: int = 15) -> None:
    """Print torch.profiler's table of the operators that take ``case``'s forward time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    network, inputs = build(case, layout), torch.randn(*case.shape)
    with torch.inference_mode():
        network(inputs)
        with torch_profile(activities=[ProfilerActivity.CPU]) as profiler:
            for _ in range(3):
                network(inputs)
    print(f"\n### torch.profiler: {case.label}, 3 forwards, self CPU time\n")
    print("```")
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))
    print("```")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny presets only, shorter timing")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (both sides)")
    parser.add_argument("--repeats", type=int, default=3, help="matmul/network pairs per network")
    parser.add_argument("--seconds", type=float, default=1.5, help="minimum time per timing")
    parser.add_argument("--matmul-size", type=int, default=2048, help="n of the n x n matmul")
    parser.add_argument("--profile", nargs="*", default=[], help="labels to profile afterwards")
    parser.add_argument(
        "--backend",
        choices=["torch", "auto", "openvino", "onnxruntime"],
        default="torch",
        help="time the forward as medseg predict --backend runs it (not the Conv3d row)",
    )
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall time, or the process's CPU time (with --threads 1, the time a loaded "
        "machine gave it)",
    )
    parser.add_argument("--cases", nargs="*", default=[], help="only these labels")
    parser.add_argument(
        "--layout",
        choices=["predict", "plain"],
        default="predict",
        help="networks as medseg predict runs them on the CPU (channels-last), or as built",
    )
    args = parser.parse_args()
    # A benchmark owns its process: the thread count is fixed for both sides.
    torch.set_num_threads(args.threads)
    cases = [Case("Conv3d 32->32 k3", "conv3d", "-", (1, 32, 64, 64, 64), 32, "conv"), *CASES]
    if args.quick:
        cases = [c for c in cases if c.label in QUICK or c.network == "conv3d"]
        args.repeats, args.seconds = 2, 0.5
    if args.cases:
        cases = [c for c in cases if c.label in args.cases]
    if args.backend != "torch":
        cases = [c for c in cases if c.network != "conv3d"]
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    with tempfile.TemporaryDirectory(prefix="medseg-efficiency-") as scratch:
        # the exports are cached in the scratch folder, not in the user's cache
        os.environ["XDG_CACHE_HOME"] = scratch
        rows, verdicts = table(cases, args, Path(scratch), clock)
    columns = ["network", "input", "GFLOP/forward", "GFLOP/s", "matmul GFLOP/s", "fraction"]
    print(markdown_table([*columns, "target"], rows))
    print(
        f"\nmatmul: float32 {args.matmul_size}^2 torch.mm, timed just before each network; "
        f"each rate is the median of {args.repeats} timings of >= {args.seconds} s "
        f"({args.clock} time); networks laid out as {args.layout!r} (see --layout), run by "
        f"{args.backend!r} (see --backend)."
    )
    print("\n".join(["", *verdicts]))
    by_label = {case.label: case for case in cases}
    for label in args.profile:
        profile(by_label[label], args.layout)


def table(
    cases: list[Case], args: argparse.Namespace, scratch: Path, clock: Callable[[], float]
) -> tuple[list[list], list[str]]:
    """The table's rows and a PASS/MISS line per case, each timed as ``args`` say."""
    header("Compute efficiency: forward GFLOP/s against float32 matmul", args.threads)
    rows, verdicts = [], []
    for case in cases:
        if args.backend == "torch":
            network = counted = build(case, args.layout)
        else:
            network, counted, case = build_for_backend(case, args.backend, scratch)
        result = measure(
            case, network, counted, args.repeats, args.seconds, args.matmul_size, clock
        )
        fraction = result["rate"] / result["matmul"]
        target = (TINY_TARGETS if case.preset == "tiny" else TARGETS)[case.family]
        shape = "x".join(map(str, case.shape))
        rows.append(
            [
                case.label,
                shape,
                result["flops"] / 1e9,
                result["rate"],
                result["matmul"],
                f"{100 * fraction:.0f} %",
                f">= {100 * target:.0f} %",
            ]
        )
        verdict = "PASS" if fraction >= target else "MISS"
        verdicts.append(f"{verdict}: {case.label} at {100 * fraction:.0f} % of matmul")
        print(f"  {case.label}: {result['rate']:.1f} GFLOP/s", flush=True)
    print()
    return rows, verdicts


if __name__ == "__main__":
    main()
