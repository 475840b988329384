"""Scaling: ``medseg predict`` time and peak memory against volume size.

One generated LiTS-style CT volume per size (64^3, 128^3, 256^3, 512x512x300, 512x512x600
by default), each segmented by ``medseg predict`` in a child process of its own, so its
wall time and peak RSS are that size's alone. The model is a small untrained 3D UNet++
(seeded; ``tiny`` preset narrowed to 4-8-16-32 filters so the largest volume stays within
minutes on a CPU) without resampling, so the network sees every input voxel that survives
the body crop. Windows do not overlap by default (``--overlap``), which keeps the largest
volume to a few minutes; the number of windows, and so the time, stays proportional to the
volume either way.

Reported per size: the process's wall time, the case's own seconds from
``predict_report.json`` (reading, inference, inversion; not interpreter start-up), seconds
per million voxels, peak RSS, and the memory the volume itself adds: peak RSS above the
smallest volume's (which is the interpreter, torch, MONAI and the model), per voxel and
against ``medseg``'s own estimate (``pipelines/resources.prediction_bytes``, which
``medseg predict`` checks against the free memory before reading a case). Targets: time
linear in size (seconds per voxel of the largest volume within 1.25x of the next smaller's)
and memory bounded (the added memory under the estimate at every size, so its bytes per
voxel stay constant as volumes grow).

    .venv/bin/python benchmarks/scaling.py           # about 6 minutes
    .venv/bin/python benchmarks/scaling.py --quick   # up to 256^3, about a minute
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
from pathlib import Path

# The helpers sit beside this script (not in a package); Python puts the script's own
# folder first on ``sys.path``, so they import as a top-level module.
from _common import (
    MEDSEG,
    ct_intensity,
    gib,
    header,
    markdown_table,
    measured_run,
    model_dir,
    require_success,
    window_arguments,
)

SIZES = [(64, 64, 64), (128, 128, 128), (256, 256, 256), (512, 512, 300), (512, 512, 600)]
QUICK_SIZES = SIZES[:3]
LINEARITY = 1.25


def generate(work: Path, shape: tuple[int, int, int]) -> Path:
    """One LiTS-layout CT phantom of ``shape`` in its own folder; returns the volume file."""
    from medseg.datasets.synthetic import synthesize

    root = work / "x".join(map(str, shape))
    synthesize("lits", root, cases=1, shape=shape, seed=4)
    return next(root.glob("volume-*.nii"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="sizes up to 256^3 only")
    window_arguments(parser, overlap=0.0, sw_batch_size=4)
    args = parser.parse_args()
    sizes = QUICK_SIZES if args.quick else SIZES

    header("Scaling: medseg predict time and memory against volume size")
    work = Path(tempfile.mkdtemp(prefix="medseg-scaling-bench-"))
    try:
        run_benchmark(work, sizes, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_benchmark(work: Path, sizes: list[tuple[int, int, int]], args: argparse.Namespace) -> None:
    """Generate, segment and tabulate every size in ``sizes``."""
    from medseg.pipelines.resources import prediction_bytes

    volumes = {shape: generate(work, shape) for shape in sizes}
    # The CT statistics of the smallest phantom serve every size (same generator).
    model = model_dir(
        work / "model",
        layout="lits",
        options={"features": [4, 8, 16, 32]},
        roi_size=[args.roi] * 3,
        overlap=args.overlap,
        sw_batch_size=args.sw_batch_size,
        intensity=ct_intensity(volumes[sizes[0]].parent),
    )
    print(
        f"network: UNet++ tiny narrowed to 4-8-16-32 (untrained, seeded), 1 channel in, 3 out, "
        f"roi {args.roi}^3, overlap {args.overlap}, {args.sw_batch_size} windows per forward, "
        "Gaussian blending, no resampling\n"
    )
    rows, per_voxel, fits, start_up = [], [], [], None
    for shape in sizes:
        output = work / "out" / "x".join(map(str, shape))
        run = measured_run(
            [MEDSEG, "-q", "predict", str(model), str(volumes[shape]), "--output", str(output)]
        )
        require_success(run, f"medseg predict on {shape}")
        report = json.loads((output / "predict_report.json").read_text(encoding="utf-8"))
        case = report["cases"][0]
        voxels = math.prod(shape)
        estimate = prediction_bytes(shape, 1, 3)
        per_voxel.append(case["seconds"] / voxels)
        start_up = run.peak_rss if start_up is None else start_up
        added = run.peak_rss - start_up
        fits.append(added <= estimate)
        rows.append(
            [
                "x".join(map(str, shape)),
                f"{voxels / 1e6:.1f}",
                run.seconds,
                case["seconds"],
                f"{case['windows']} ({case['skipped_windows']})",
                1e6 * case["seconds"] / voxels,
                gib(run.peak_rss),
                gib(added),
                added / voxels,
                gib(estimate),
            ]
        )
        print(f"  {rows[-1][0]}: {run.seconds:.1f} s, {gib(run.peak_rss):.2f} GiB", flush=True)
    print()
    columns = ["size", "M voxels", "process s", "case s", "windows (reused)", "s per M voxels"]
    columns += ["peak RSS GiB", "added GiB", "added bytes/voxel", "estimate GiB"]
    print(markdown_table(columns, rows))
    print(
        "\nprocess s: the whole `medseg predict` (interpreter and model start-up included); "
        "case s: the case's own seconds in predict_report.json; windows (reused): sliding "
        "windows, and of those the constant (background) ones answered from the cache; "
        f"added: peak RSS above the {rows[0][0]} run's; estimate: prediction_bytes."
    )
    growth = per_voxel[-1] / per_voxel[-2]
    verdict = "PASS" if growth <= LINEARITY else "MISS"
    print(
        f"\n{verdict}: time linear in size: seconds per voxel at {rows[-1][0]} are "
        f"{growth:.2f}x those at {rows[-2][0]} (target <= {LINEARITY}x)"
    )
    verdict = "PASS" if all(fits) else "MISS"
    print(
        f"{verdict}: memory bounded: the memory a volume adds is under medseg's own estimate "
        "at every size"
    )


if __name__ == "__main__":
    main()
