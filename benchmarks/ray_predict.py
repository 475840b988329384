"""Batch prediction on Ray: ``medseg predict --ray local`` with 1 and 2 actors against plain
``medseg predict`` on the same LiTS-size CT cases (512 x 512 x Z, an untrained seeded UNet++).

Every side runs as its own process from a cold start. Ray's start-up (a local runtime, an
actor process importing torch and loading the model) is paid once per run, so the cost that
grows with the cohort is found by difference: each of plain and 1 actor also segments one
case alone, and ``(T(N) - T(1)) / (N - 1)`` is a side's steady time per case, start-up
cancelled. Ray's overhead per case is the 1-actor steady time over the plain one, minus 1
(target: under 10 %). Every process runs one intra-op thread, as an actor reserving one CPU
does. On a 2-core machine 2 actors show overhead and sharing, not speed-up.

    .venv/bin/python benchmarks/ray_predict.py                 # 3 cases, Z = 48: ~10 minutes
    .venv/bin/python benchmarks/ray_predict.py --cases 4 --slices 64
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from _common import MEDSEG, ct_intensity, header, markdown_table, measured_run, model_dir

OVERHEAD_TARGET = 0.10


def command(model: Path, inputs: list[Path], output: Path, actors: int) -> list[str]:
    """``medseg predict`` of ``inputs`` into ``output``; on Ray with ``actors`` (0: plain)."""
    line = [MEDSEG, "-q", "predict", str(model), *map(str, inputs), "-o", str(output)]
    line.append("--overwrite")
    if actors:
        line += ["--ray", "local", "--ray-actors", str(actors)]
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=3, help="LiTS-size cases (2 or more)")
    parser.add_argument("--slices", type=int, default=48, help="Z of the 512x512xZ CT cases")
    parser.add_argument("--work", type=Path, help="keep data and outputs here (default: temp)")
    args = parser.parse_args()
    if args.cases < 2:
        parser.error("--cases must be 2 or more (the steady time per case is a difference)")
    header("Batch predict on Ray against plain medseg predict")
    work = args.work or Path(tempfile.mkdtemp(prefix="medseg-bench-ray-"))
    try:
        run_benchmark(work, args)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


def run_benchmark(work: Path, args: argparse.Namespace) -> None:
    """Generate the cases, run every side once (alternating), print the table and verdict."""
    from medseg.datasets.synthetic import synthesize

    root = work / "lits"
    synthesize("lits", root, cases=args.cases, shape=(512, 512, args.slices), seed=1)
    model = model_dir(
        work / "model",
        layout="lits",
        roi_size=[64, 64, 64],
        spacing=[1.5, 1.5, 3.0],
        overlap=0.25,
        intensity=ct_intensity(root),
    )
    inputs = sorted(root.glob("volume-*.nii"))
    runs = [("plain", 0, 1), ("Ray, 1 actor", 1, 1)]
    runs += [("plain", 0, args.cases), ("Ray, 1 actor", 1, args.cases)]
    runs += [("Ray, 2 actors", 2, args.cases)]
    seconds: dict[tuple[str, int], float] = {}
    # One intra-op thread everywhere: an actor reserving one CPU runs one, and plain predict
    # on as many would otherwise differ by its thread count, not by Ray.
    environment = os.environ | {"RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
    for index, (side, actors, count) in enumerate(runs):
        output = work / f"out-{index}"
        run = measured_run(command(model, inputs[:count], output, actors), env=environment)
        if run.returncode != 0:
            raise SystemExit(f"{side} on {count} cases failed:\n{run.output[-3000:]}")
        seconds[side, count] = run.seconds
    steady = {
        side: (seconds[side, args.cases] - seconds[side, 1]) / (args.cases - 1)
        for side in ("plain", "Ray, 1 actor")
    }
    rows = []
    for side in ("plain", "Ray, 1 actor", "Ray, 2 actors"):
        total = seconds[side, args.cases]
        rows.append(
            [
                side,
                f"{total:.1f}",
                f"{args.cases / total:.3f}",
                f"{seconds['plain', args.cases] / total:.2f}x",
                f"{steady[side]:.1f}" if side in steady else "-",
            ]
        )
    print(f"{args.cases} LiTS-size CT cases (512x512x{args.slices}), roi 64^3, overlap 0.25\n")
    columns = ["side", f"wall s ({args.cases} cases)", "cases/s", "vs plain", "steady s/case"]
    print(markdown_table(columns, rows))
    startup = seconds["Ray, 1 actor", 1] - seconds["plain", 1]
    overhead = steady["Ray, 1 actor"] / steady["plain"] - 1
    verdict = "PASS" if overhead < OVERHEAD_TARGET else "MISS"
    print(f"\nRay start-up (1 case, Ray minus plain): {startup:.1f} s")
    print(
        f"Ray overhead per case: {overhead:+.1%} of a plain case's steady time "
        f"(target < {OVERHEAD_TARGET:.0%}): {verdict}"
    )


if __name__ == "__main__":
    main()
