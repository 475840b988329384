"""Coarse-to-fine inference on LiTS-size CT: time and Dice against the full pass.

A tiny 3D UNet++ is trained briefly (``medseg train``; a few dozen steps) on generated LiTS
phantoms; generated LiTS-size cases (512 x 512 x N slices, the liver a small part of the
trunk) are then each read once and segmented in this process by two ``Segmenter``s, one
with coarse-to-fine and one without, alternating. Printed per case: the time of the
probabilities (the sliding-window stage, the only one coarse-to-fine changes) and of the
whole ``Segmenter.infer`` (with the return to the input's grid), their ratios, the
windows each ran, the liver Dice of each output against the phantom's labels, and the
Dice between the two outputs. Target: >= 2x faster with liver Dice within 0.01.

    .venv/bin/python benchmarks/coarse_to_fine.py
    .venv/bin/python benchmarks/coarse_to_fine.py --cases 1 --slices 100 --epochs 2
    .venv/bin/python benchmarks/coarse_to_fine.py --model runs/lits/model
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import yaml
from _common import MEDSEG, header, label_dice, markdown_table, measured_run, require_success

TARGET_SPEEDUP = 2.0
TARGET_DICE_CHANGE = 0.01
LIVER = 1


def _medians(seconds: dict[str, list[float]]) -> str:
    """``"<full> / <coarse-to-fine>"``: the median seconds of each mode."""
    return " / ".join(f"{statistics.median(seconds[mode]):.1f}" for mode in ("full", "c2f"))


def train_model(work: Path, args: argparse.Namespace) -> Path:
    """Train the tiny UNet++ on small LiTS phantoms; its model directory."""
    from medseg.datasets.synthetic import synthesize

    data = work / "train"
    synthesize("lits", data, cases=args.train_cases, shape=(256, 256, 48), seed=0)
    config = {
        "data": {"layout": "lits", "root": str(data), "folds": args.train_cases},
        "network": {
            "name": "unetpp",
            "preset": "tiny",
            "options": {"features": [8, 16, 32], "norm": "batch"},
        },
        "transforms": {"patch_size": [args.roi] * 3, "samples_per_case": 2},
        "train": {
            "epochs": args.epochs,
            "batch_size": 2,
            "lr": 0.01,
            "iterations_per_epoch": args.iterations,
            "val_every": args.epochs,
            "val_max_windows": 8,
        },
        "infer": {"overlap": args.overlap, "sw_batch_size": 2},
        "output": str(work / "run"),
        "tracking": {"enabled": False},
    }
    path = work / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    run = measured_run([MEDSEG, "-q", "train", str(path)])
    require_success(run, "medseg train")
    print(f"trained in {run.seconds:.0f} s ({args.epochs} epochs of {args.iterations} steps)\n")
    return work / "run" / "model"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=2, help="LiTS-size cases to segment")
    parser.add_argument("--slices", type=int, default=120, help="slices of each case")
    parser.add_argument("--train-cases", type=int, default=5, help="training phantoms")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs")
    parser.add_argument("--iterations", type=int, default=15, help="steps per epoch")
    parser.add_argument("--roi", type=int, default=32, help="patch and window size (cube)")
    parser.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each mode")
    parser.add_argument("--model", type=Path, help="a trained model directory (skips training)")
    args = parser.parse_args()

    import torch

    from medseg.datasets import discover
    from medseg.datasets.synthetic import synthesize
    from medseg.pipelines.inference import WindowCount, sliding_window_predict, window_shape
    from medseg.pipelines.model_dir import open_model
    from medseg.pipelines.prediction.coarse_to_fine import CoarseToFine
    from medseg.pipelines.prediction.segmenter import Segmenter
    from medseg.transforms.labels import probabilities

    header("Coarse-to-fine inference against the full sliding-window pass, LiTS-size CT")
    work = Path(tempfile.mkdtemp(prefix="medseg-c2f-"))
    cpu = torch.device("cpu")
    try:
        model = args.model or train_model(work, args)
        config, network = open_model(model)
        full = Segmenter([(config, network)], cpu, coarse_to_fine=False)
        coarse = Segmenter([(config, network)], cpu, coarse_to_fine=True)
        method = CoarseToFine(config.inference.coarse_factor, config.inference.coarse_margin_mm)
        inference = config.inference
        cases_root = work / "cases"
        synthesize("lits", cases_root, cases=args.cases, shape=(512, 512, args.slices), seed=1)
        rows, stage_ratios, infer_ratios, changes = [], [], [], []
        for case in discover("lits", cases_root).cases:
            truth = np.asarray(nib.load(case.label).dataobj)
            data = full.load(case)
            image = data["image"][None]
            counts = {"full": WindowCount(), "c2f": WindowCount()}

            def predict(part, count):
                logits = sliding_window_predict(
                    full.networks[0],
                    part,
                    roi_size=inference.roi_size,
                    overlap=inference.overlap,
                    sw_batch_size=inference.sw_batch_size,
                    mode=inference.mode,
                    skip_empty=True,
                    count=count,
                )
                return probabilities(logits, config.scheme)[0]

            window = window_shape(inference.roi_size, image.ndim - 2)
            spacing = [float(mm) for mm in data["image"].pixdim]
            stage = {"full": [], "c2f": []}
            whole = {"full": [], "c2f": []}
            labels = {}
            for repeat in range(args.repeats):
                order = ("full", "c2f") if repeat % 2 == 0 else ("c2f", "full")
                for mode in order:
                    count = counts[mode] if repeat == 0 else WindowCount()
                    started = time.perf_counter()
                    if mode == "full":
                        predict(image, count)
                    else:
                        method.probabilities(
                            image,
                            lambda part, count=count: predict(part, count),
                            config.scheme,
                            window,
                            inference.overlap,
                            spacing,
                        )
                    stage[mode].append(time.perf_counter() - started)
                    if repeat == 0:
                        started = time.perf_counter()
                        # each segmenter inverts only what its own transforms did
                        segmenter = full if mode == "full" else coarse
                        result = segmenter.infer(segmenter.load(case))
                        whole[mode].append(time.perf_counter() - started)
                        labels[mode] = result.labels
            stage_ratio = statistics.median(stage["full"]) / statistics.median(stage["c2f"])
            infer_ratio = statistics.median(whole["full"]) / statistics.median(whole["c2f"])
            full_dice = label_dice(labels["full"], truth).get(LIVER, 0.0)
            c2f_dice = label_dice(labels["c2f"], truth).get(LIVER, 0.0)
            agreement = label_dice(labels["c2f"], labels["full"]).get(LIVER, 1.0)
            stage_ratios.append(stage_ratio)
            infer_ratios.append(infer_ratio)
            changes.append(c2f_dice - full_dice)
            rows.append(
                [
                    f"{case.id} ({100 * float((truth > 0).mean()):.1f} % liver)",
                    "x".join(str(size) for size in image.shape[2:]),
                    _medians(stage),
                    f"{stage_ratio:.2f}x",
                    _medians(whole),
                    f"{infer_ratio:.2f}x",
                    f"{counts['full'].windows} / {counts['c2f'].windows}",
                    f"{full_dice:.4f} / {c2f_dice:.4f}",
                    f"{agreement:.4f}",
                ]
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"{args.cases} LiTS-size case(s) of 512x512x{args.slices}; tiny 3D UNet++ trained "
        f"{args.epochs}x{args.iterations} steps, roi {args.roi}^3, overlap {args.overlap}; "
        f"median of {args.repeats} alternating runs; full / coarse-to-fine\n"
    )
    columns = [
        "case",
        "preprocessed",
        "sliding window s",
        "speed-up",
        "infer s",
        "speed-up",
        "windows",
        "liver Dice vs truth",
        "Dice c2f vs full",
    ]
    print(markdown_table(columns, rows))
    speedup, change = statistics.median(stage_ratios), max(changes, key=abs)
    fast = "PASS" if speedup >= TARGET_SPEEDUP else "MISS"
    same = "PASS" if abs(change) <= TARGET_DICE_CHANGE else "MISS"
    print(
        f"\n{fast}: sliding-window stage {speedup:.2f}x faster (median; target >= "
        f"{TARGET_SPEEDUP}x); whole infer {statistics.median(infer_ratios):.2f}x"
    )
    print(f"{same}: liver Dice change {change:+.4f} at most (target within {TARGET_DICE_CHANGE})")


if __name__ == "__main__":
    main()
