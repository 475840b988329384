"""``medseg prune`` against one ``medseg predict`` pass over the same cases.

``medseg prune`` scores every level's Dice on every case from one sliding pass per case and
times the levels on a fixed sample of windows, so its cost should stay a small multiple of
one prediction however many and however large the cases. Both commands run on the same
generated BraTS cases with the same untrained, seeded 3D UNet++ (``tiny`` preset by
default), each in its own process, alternating; the median ratio prune / predict is printed
with the target (at most 3x on four full-size BraTS cases).

    .venv/bin/python benchmarks/prune_scaling.py                        # 4 cases 240x240x155
    .venv/bin/python benchmarks/prune_scaling.py --cases 2 --shape 160 160 100 --pairs 1
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from _common import MEDSEG, header, markdown_table, measured_run, model_dir, require_success

TARGET = 3.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=4, help="generated BraTS cases")
    parser.add_argument(
        "--shape", type=int, nargs=3, default=[240, 240, 155], help="case size (voxels)"
    )
    parser.add_argument("--preset", default="tiny", help="3D UNet++ preset")
    parser.add_argument("--roi", type=int, default=96, help="sliding-window size (cube)")
    parser.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap")
    parser.add_argument("--pairs", type=int, default=1, help="predict/prune pairs to run")
    args = parser.parse_args()

    header("medseg prune against one medseg predict pass")
    work = Path(tempfile.mkdtemp(prefix="medseg-prune-scaling-"))
    try:
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
        )
        rows, ratios = [], []
        for pair in range(args.pairs):
            predicted = measured_run(
                [MEDSEG, "-q", "predict", str(model), str(data), "-o", str(work / f"p{pair}")]
            )
            require_success(predicted, "medseg predict")
            pruned = measured_run(
                [MEDSEG, "-q", "prune", str(model), str(data), "-o", str(work / f"q{pair}")]
            )
            require_success(pruned, "medseg prune")
            ratios.append(pruned.seconds / predicted.seconds)
            rows.append([pair + 1, predicted.seconds, pruned.seconds, f"{ratios[-1]:.2f}x"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    shape = "x".join(map(str, args.shape))
    print(
        f"{args.cases} BraTS case(s) of 4x{shape}, 3D UNet++ {args.preset}, roi {args.roi}^3, "
        f"overlap {args.overlap}; prune with its defaults (levels 1..4, 8 sample windows, "
        "3 repeats)\n"
    )
    print(markdown_table(["pair", "predict (s)", "prune (s)", "prune / predict"], rows))
    ratio = sorted(ratios)[len(ratios) // 2]
    verdict = "PASS" if ratio <= TARGET else "MISS"
    print(f"\n{verdict}: prune takes {ratio:.2f}x one predict pass (target <= {TARGET:g}x)")


if __name__ == "__main__":
    main()
