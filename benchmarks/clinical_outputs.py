"""What statistics.csv and a preview add to ``medseg predict`` of a LiTS-size CT (issue #18).

One process runs ``predict`` on one 512x512xZ CT case again and again (``overwrite``),
alternating two sides: the baseline with the per-case description switched off (its
``CaseDescriber.describe`` returns no rows, so neither statistics nor a preview are made)
and the candidate as users run it, with ``preview=True``. One case per run is the worst
case: with several cases the description of one overlaps the next one's inference in the
writer thread. The ratio of the median wall times is the cost; the target is at most 1.10.
The candidate's time inside ``describe`` is also taken, as a share of its run: on a loaded
machine the drift between runs can exceed the cost itself, and this share cannot drift.

    .venv/bin/python benchmarks/clinical_outputs.py              # 512x512x100, 3 pairs
    .venv/bin/python benchmarks/clinical_outputs.py --quick      # 512x512x48, 2 pairs
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ct_intensity, header, markdown_table, median, model_dir

TARGET = 1.10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=100, help="Z of the 512x512xZ CT case")
    parser.add_argument("--pairs", type=int, default=3, help="baseline/candidate pairs")
    parser.add_argument("--quick", action="store_true", help="Z = 48, 2 pairs")
    parser.add_argument("--work", type=Path, help="keep data and outputs here (default: temp)")
    args = parser.parse_args()
    if args.quick:
        args.slices, args.pairs = 48, 2
    header("Statistics and a preview in medseg predict")
    work = args.work or Path(tempfile.mkdtemp(prefix="medseg-bench-"))
    try:
        run_benchmark(work, args)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


def run_benchmark(work: Path, args: argparse.Namespace) -> None:
    """Generate the case and the model, alternate the sides, print the table and verdict."""
    from medseg.datasets.synthetic import synthesize
    from medseg.pipelines.prediction.clinical_outputs import CaseDescriber
    from medseg.pipelines.prediction.predict import predict

    root = work / "lits"
    synthesize("lits", root, cases=1, shape=(512, 512, args.slices), seed=1)
    model = model_dir(
        work / "model-lits",
        layout="lits",
        roi_size=[64, 64, 64],
        spacing=[1.5, 1.5, 3.0],
        overlap=0.25,
        intensity=ct_intensity(root),
    )
    inputs = [str(path) for path in sorted(root.glob("volume-*.nii"))]
    describe = CaseDescriber.describe
    spent: list[float] = []

    def timed_describe(self: CaseDescriber, *arguments: object) -> list[dict]:
        started = time.perf_counter()
        try:
            return describe(self, *arguments)
        finally:
            spent.append(time.perf_counter() - started)

    times: dict[str, list[float]] = {"without": [], "with statistics + preview": []}
    shares: list[float] = []
    # Warm-up: imports, the first forward's allocations and matplotlib's font cache.
    predict(model, inputs, work / "out", show_progress=False, overwrite=True, preview=True)
    for pair in range(args.pairs):
        sides = list(times) if pair % 2 == 0 else list(reversed(times))
        for side in sides:
            preview = side != "without"
            CaseDescriber.describe = timed_describe if preview else lambda *_, **__: []
            spent.clear()
            started = time.perf_counter()
            report = predict(
                model,
                inputs,
                work / "out",
                show_progress=False,
                overwrite=True,
                preview=preview,
            )
            times[side].append(time.perf_counter() - started)
            if report.failed:
                raise SystemExit(f"predict failed: {report.cases}")
            if preview:
                shares.append(sum(spent) / times[side][-1])
            note = f", describe {sum(spent):.2f} s" if preview else ""
            print(f"  {side}: {times[side][-1]:.1f} s{note}", flush=True)
    CaseDescriber.describe = describe
    rows = [
        [side, len(values), " ".join(f"{v:.1f}" for v in values), median(values)]
        for side, values in times.items()
    ]
    print(f"case: LiTS 512x512x{args.slices} CT, UNet++ tiny (untrained), roi 64^3\n")
    print(markdown_table(["side", "runs", "wall s", "median s"], rows))
    ratio = median(times["with statistics + preview"]) / median(times["without"])
    verdict = "PASS" if ratio <= TARGET else "MISS"
    print(f"\nratio with / without: {ratio:.3f} (target <= {TARGET:.2f}): {verdict}")
    share = median(shares)
    print(f"describe's share of the candidate's runs: {share:.1%} (added: {1 / (1 - share):.3f}x)")


if __name__ == "__main__":
    main()
