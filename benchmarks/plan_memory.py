"""Planning memory: ``medseg plan`` on a 20-case LiTS-size CT dataset stays under 2 GB.

Generates ``--distinct`` LiTS-layout CT phantoms of ``--shape`` (512x512x500 by default)
and links them under 20 case names (planning reads every case in turn, whatever its bytes),
then runs ``medseg plan lits`` in a child process and reports its wall time and peak RSS.
The baseline, in the same run, is a child process that only reads the largest case's
volume and segmentation with nibabel as float32 and int16: the least any tool that looks
at the voxels must hold. Target: the plan's peak under 2 GiB, so its memory is one case's,
not the dataset's.

    .venv/bin/python benchmarks/plan_memory.py            # about 5 minutes
    .venv/bin/python benchmarks/plan_memory.py --quick    # 4 cases of 256x256x200
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from _common import MEDSEG, gib, header, markdown_table, measured_run, require_success

TARGET_GIB = 2.0
READ_ONE_CASE = """
import sys
import nibabel as nib
import numpy as np
volume = nib.load(sys.argv[1]).get_fdata(dtype=np.float32)
label = np.asanyarray(nib.load(sys.argv[2]).dataobj).astype(np.int16)
print(volume.shape, int(label.max()))
"""


def generate(root: Path, shape: tuple[int, ...], distinct: int, cases: int) -> None:
    """``distinct`` phantoms of ``shape``, hard-linked under ``cases`` LiTS names in ``root``."""
    from medseg.datasets.synthetic import synthesize

    source = root.parent / "distinct"
    synthesize("lits", source, cases=distinct, shape=shape, seed=7)
    volumes = sorted(source.glob("volume-*.nii"))
    labels = sorted(source.glob("segmentation-*.nii"))
    root.mkdir(parents=True)
    for case in range(cases):
        os.link(volumes[case % distinct], root / f"volume-{case}.nii")
        os.link(labels[case % distinct], root / f"segmentation-{case}.nii")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 cases of 256x256x200")
    parser.add_argument("--distinct", type=int, default=2, help="phantoms generated")
    args = parser.parse_args()
    shape, cases = ((256, 256, 200), 4) if args.quick else ((512, 512, 500), 20)

    header("Planning memory: medseg plan on LiTS-size CT")
    work = Path(tempfile.mkdtemp(prefix="medseg-plan-bench-"))
    try:
        root = work / "lits"
        generate(root, shape, min(args.distinct, cases), cases)
        baseline = measured_run(
            [
                sys.executable,
                "-c",
                READ_ONE_CASE,
                str(root / "volume-0.nii"),
                str(root / "segmentation-0.nii"),
            ]
        )
        require_success(baseline, "reading one case")
        plan = measured_run([MEDSEG, "-q", "plan", "lits", str(root), "-o", str(work / "plan")])
        require_success(plan, "medseg plan")
        rows = [
            ["read one case (baseline)", baseline.seconds, gib(baseline.peak_rss), 1.0],
            [
                f"medseg plan, {cases} cases",
                plan.seconds,
                gib(plan.peak_rss),
                plan.peak_rss / baseline.peak_rss,
            ],
        ]
        print(f"{cases} cases of {'x'.join(map(str, shape))} voxels (int16 CT, uint8 labels)\n")
        print(markdown_table(["run", "wall s", "peak RSS GiB", "x baseline"], rows))
        verdict = "PASS" if gib(plan.peak_rss) < TARGET_GIB else "MISS"
        print(f"\ntarget: peak under {TARGET_GIB} GiB: {verdict}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
