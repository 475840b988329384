"""The Python API against the command: ``load_model`` + ``segment_many`` on small cases
against ``medseg predict``'s function on the same files.

Both sides load the same model directory (an untrained, seeded tiny UNet++ for LiTS CT)
and segment the same generated cases, alternating in one process (each side first in
every other round) so that a drift in machine load and warm-up fall on both; each side's
time includes loading the model. The API keeps
its label maps in memory (what a notebook does with them); ``predict`` writes them, as
the command does. The labels of the two sides are compared voxel by voxel.

    .venv/bin/python benchmarks/api_segment_many.py             # 8 cases of 64x64x48, 6 rounds
    .venv/bin/python benchmarks/api_segment_many.py --quick     # 8 cases of 48x48x32, 1 round
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import ct_intensity, header, markdown_table, median, model_dir


def run_api(model: Path, volumes: list[Path]) -> tuple[float, list[np.ndarray]]:
    """Seconds to load ``model`` and segment ``volumes`` with ``segment_many``, and the labels."""
    import medseg

    started = time.perf_counter()
    loaded = medseg.load_model(model, device="cpu")
    labels = [np.asarray(image.dataobj) for image in loaded.segment_many(volumes)]
    return time.perf_counter() - started, labels


def run_predict(model: Path, cases: Path, output: Path) -> float:
    """Seconds ``medseg predict``'s function takes on ``cases`` into a fresh ``output``."""
    from medseg.pipelines.prediction.predict import predict

    shutil.rmtree(output, ignore_errors=True)
    started = time.perf_counter()
    report = predict(model, [str(cases)], output, device="cpu", show_progress=False)
    seconds = time.perf_counter() - started
    if report.failed:
        raise SystemExit(f"medseg predict failed on {report.failed} cases")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 64, 48])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--quick", action="store_true", help="48x48x32 cases, one round")
    options = parser.parse_args()
    if options.quick:
        options.shape, options.rounds = [48, 48, 32], 1

    import nibabel as nib
    import torch

    from medseg.datasets.synthetic import synthesize

    torch.set_num_threads(1)
    header("segment_many (Python API) vs medseg predict", threads=1)
    work = Path(tempfile.mkdtemp(prefix="medseg-api-bench-"))
    try:
        cases = work / "cases"
        synthesize("lits", cases, cases=options.cases, shape=tuple(options.shape), seed=0)
        volumes = sorted(cases.glob("volume-*.nii"))
        model = model_dir(
            work / "model", layout="lits", roi_size=[32, 32, 32], intensity=ct_intensity(cases)
        )
        api_times, predict_times = [], []
        for round_ in range(options.rounds):
            # Each side goes first every other round, so warm-up falls on both.
            if round_ % 2 == 0:
                predict_times.append(run_predict(model, cases, work / "predicted"))
            seconds, labels = run_api(model, volumes)
            api_times.append(seconds)
            if round_ % 2 == 1:
                predict_times.append(run_predict(model, cases, work / "predicted"))
        written = [
            np.asarray(nib.load(work / "predicted" / f"{volume.stem}.nii.gz").dataobj)
            for volume in volumes
        ]
        same = all(np.array_equal(a, b) for a, b in zip(labels, written, strict=True))
        ratio = median(api_times) / median(predict_times)
        rows = [
            ["medseg predict", f"{median(predict_times):.2f}", "1.00"],
            ["load_model + segment_many", f"{median(api_times):.2f}", f"{ratio:.2f}"],
        ]
        size = "x".join(map(str, options.shape))
        print(f"{options.cases} LiTS phantoms of {size}, median of {options.rounds} alternating")
        print("rounds, model load included\n")
        print(markdown_table(["side", "seconds", "ratio"], rows))
        per_round = ", ".join(
            f"{api / command:.2f}" for api, command in zip(api_times, predict_times, strict=True)
        )
        print(f"\nratio per round: {per_round}")
        print(f"\nidentical labels on every case: {same}")
        verdict = "PASS" if ratio <= 1.0 and same else "MISS"
        print(f"{verdict}: segment_many / predict = {ratio:.2f} (target <= 1.0)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
