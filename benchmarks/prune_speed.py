"""UNet++ pruning: time per case at levels L1..L4, each against L4 in the same process.

Two measurements, both on one CPU process with the levels' order alternating between
repeats (a slow drift in machine load then falls on every level alike):

* ``medseg prune`` on generated BraTS cases with a 3D UNet++ (untrained, seeded; the
  ``tiny`` preset by default): its ``pruning.csv`` gives the sliding-window seconds per
  case of every level, measured by ``medseg prune`` itself in one process.
* The paper's own configuration (Zhou et al., TMI 2019, Section IV-B and Fig. 7): the 2D
  UNet++ with 32-64-128-256-512 filters (``paper`` preset, batch norm) on 96 x 96 patches,
  one forward pass per patch batch, timed here.

The targets are the paper's inference speed-ups against L4: L3 1.5x, L2 2.4x, L1 3.5x.
FLOPs per window come from ``torch.utils.flop_counter`` (``medseg prune`` reports them too).

    .venv/bin/python benchmarks/prune_speed.py           # defaults: about a minute
    .venv/bin/python benchmarks/prune_speed.py --quick   # about a minute
"""

from __future__ import annotations

import argparse
import csv
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

# The helpers sit beside this script (not in a package); Python puts the script's own
# folder first on ``sys.path``, so they import as a top-level module.
from _common import (
    MEDSEG,
    header,
    markdown_table,
    measured_run,
    model_dir,
    require_success,
    window_arguments,
)

# The paper's speed-ups of L3, L2, L1 over L4 (Fig. 7's inference times).
PAPER_SPEEDUP = {3: 1.5, 2: 2.4, 1: 3.5, 4: 1.0}


def prune_command_rows(work: Path, args: argparse.Namespace) -> list[dict]:
    """Run ``medseg prune`` on generated BraTS cases; one dict per level from its CSV."""
    from medseg.datasets.synthetic import synthesize

    data = work / "brats"
    synthesize("brats", data, cases=args.cases, shape=tuple(args.shape), seed=3)
    model = model_dir(
        work / "model",
        layout="brats",
        preset=args.preset,
        roi_size=[args.roi] * 3,
        spacing=[1.0, 1.0, 1.0],
        overlap=args.overlap,
        sw_batch_size=2,
    )
    output = work / "pruned"
    prune = [MEDSEG, "-q", "prune", str(model), str(data), "--output", str(output)]
    run = measured_run([*prune, "--repeats", str(args.repeats)])
    require_success(run, "medseg prune")
    with (output / "pruning.csv").open(encoding="utf-8") as table:
        return [
            {
                "level": int(row["level"]),
                "parameters": int(row["parameters"]),
                "flops": int(row["flops"]),
                "seconds": float(row["seconds_per_case"]),
            }
            for row in csv.DictReader(table)
        ]


def paper_network_rows(args: argparse.Namespace) -> list[dict]:
    """Time the paper's 2D UNet++ forward at every level on the same patches; one dict each.

    The network is the channels-last copy ``medseg predict`` runs on the CPU. Each level's
    time is the median of ``args.repeats`` timed forwards after one untimed forward, with the
    level order reversed on every other repeat.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from medseg.networks import build_network
    from medseg.networks.inference_layout import inference_network

    torch.manual_seed(0)
    built = build_network("unetpp", spatial_dims=2, in_channels=1, out_channels=1).eval()
    network = inference_network(built, torch.device("cpu"))
    patches = torch.randn(args.batch, 1, 96, 96)
    levels = [1, 2, 3, 4]
    times: dict[int, list[float]] = {level: [] for level in levels}
    with torch.inference_mode():
        for level in levels:
            network(patches, prune_level=level)  # warms oneDNN's kernel cache per shape
        for repeat in range(args.repeats * 3):
            for level in levels if repeat % 2 == 0 else levels[::-1]:
                started = time.perf_counter()
                network(patches, prune_level=level)
                times[level].append(time.perf_counter() - started)
    rows = []
    for level in levels:
        counter = FlopCounterMode(display=False)
        with torch.inference_mode(), counter:
            network(patches[:1], prune_level=level)
        rows.append(
            {
                "level": level,
                "parameters": network.level_parameter_count(level),
                "flops": int(counter.get_total_flops()),
                "seconds": statistics.median(times[level]),
            }
        )
    return rows


def table(rows: list[dict], unit: str) -> tuple[str, list[str]]:
    """The Markdown table of ``rows`` (ratios against L4) and a PASS/MISS line per level."""
    reference = next(row for row in rows if row["level"] == 4)
    lines, verdicts = [], []
    for row in rows:
        speedup = reference["seconds"] / row["seconds"]
        flop_ratio = reference["flops"] / row["flops"]
        lines.append(
            [
                f"L{row['level']}",
                f"{row['parameters'] / 1e6:.3f}",
                f"{row['flops'] / 1e9:.2f}",
                row["seconds"],
                f"{speedup:.2f}x",
                f"{flop_ratio:.2f}x",
                f"{PAPER_SPEEDUP[row['level']]:.1f}x",
            ]
        )
        if row["level"] != 4:
            target = PAPER_SPEEDUP[row["level"]]
            verdict = "PASS" if speedup >= target else "MISS"
            verdicts.append(
                f"{verdict}: L{row['level']} {speedup:.2f}x faster than L4 (target >= {target}x)"
            )
    columns = ["level", "M params", "GFLOP/window", unit, "speed-up vs L4", "FLOP ratio", "paper"]
    return markdown_table(columns, lines), verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer, smaller cases")
    parser.add_argument("--cases", type=int, default=2, help="generated BraTS cases")
    parser.add_argument(
        "--shape", type=int, nargs=3, default=[128, 128, 96], help="case size (voxels)"
    )
    parser.add_argument("--preset", default="tiny", help="3D UNet++ preset for medseg prune")
    window_arguments(parser, overlap=0.25)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per level")
    parser.add_argument("--batch", type=int, default=8, help="96x96 patches per 2D forward")
    args = parser.parse_args()
    if args.quick:
        args.cases, args.shape, args.repeats, args.batch = 1, [96, 96, 64], 1, 4

    header("UNet++ pruning: time per case at L1..L4 against L4")
    work = Path(tempfile.mkdtemp(prefix="medseg-prune-bench-"))
    try:
        rows = prune_command_rows(work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    shape = "x".join(map(str, args.shape))
    print(
        f"### `medseg prune`: 3D UNet++ {args.preset}, {args.cases} BraTS case(s) of 4x{shape}, "
        f"roi {args.roi}^3, overlap {args.overlap}, {args.repeats} timed run(s) per level\n"
    )
    text, verdicts = table(rows, "s/case")
    print(text + "\n")
    print("\n".join(verdicts) + "\n")

    paper = paper_network_rows(args)
    print(
        f"### The paper's network: 2D UNet++ paper preset, forward of {args.batch} patches "
        f"of 96x96, median of {args.repeats * 3}\n"
    )
    text, verdicts = table(paper, "s/forward")
    print(text + "\n")
    print("\n".join(verdicts))
    print(
        "\nFLOP ratio: L4's FLOPs per window over the level's, the speed-up the arithmetic "
        "alone allows."
    )


if __name__ == "__main__":
    main()
