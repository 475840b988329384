"""Coarse-to-fine inference on LiTS-size CT: time and Dice against the full pass.

A tiny 3D UNet++ is trained briefly (``medseg train``; a few dozen steps) on generated LiTS
phantoms at a realistic target voxel size (``--spacing``, default 2 x 2 x 3 mm; planned
from 256x256x48 phantoms it would be 1.63 x 1.63 x 8.5 mm, a few windows a volume) with the
postprocessing of ``configs/lits_hdenseunet.yaml``; generated LiTS-size cases (512 x 512 x
N slices, 0.6-0.94 mm in-plane, the liver a small part of the trunk) are then each read
once per mode and segmented in this process by two ``Segmenter``s, one with coarse-to-fine
and one without, alternating. Printed per case: the time of the probabilities on the
preprocessed grid (the only stage coarse-to-fine changes) and of the whole
``Segmenter.infer`` (with the return to the input's grid), their ratios, the fine pass's
crop, the windows each ran, the liver Dice of each output against the phantom's labels,
and the Dice between the two outputs. Target: ``Segmenter.infer`` >= 2x
faster with liver Dice within 0.01.

    .venv/bin/python benchmarks/coarse_to_fine.py
    .venv/bin/python benchmarks/coarse_to_fine.py --cases 1 --factor 4 --margin 5
    .venv/bin/python benchmarks/coarse_to_fine.py --model runs/lits/model
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

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
    shape = (256, 256, args.train_slices)
    synthesize("lits", data, cases=args.train_cases, shape=shape, seed=0)
    config = {
        "data": {"layout": "lits", "root": str(data), "folds": args.train_cases},
        "network": {
            "name": "unetpp",
            "preset": "tiny",
            "options": {"features": [8, 16, 32], "norm": "batch"},
        },
        "transforms": {
            "spacing": args.spacing,
            "patch_size": [args.roi] * 3,
            "samples_per_case": 2,
        },
        "train": {
            "epochs": args.epochs,
            "batch_size": 2,
            "lr": 0.01,
            "iterations_per_epoch": args.iterations,
            "val_every": args.epochs,
            "val_max_windows": 8,
        },
        "infer": {"overlap": args.overlap, "sw_batch_size": 2},
        # as configs/lits_hdenseunet.yaml: the output keeps one liver, tumours inside it
        "postprocess": {"largest_component": ["liver"], "inside": {"tumour": "liver"}},
        "output": str(work / "run"),
        "tracking": {"enabled": False},
    }
    path = work / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    run = measured_run([MEDSEG, "-q", "train", str(path)])
    require_success(run, "medseg train")
    print(f"trained in {run.seconds:.0f} s ({args.epochs} epochs of {args.iterations} steps)\n")
    return work / "run" / "model"


def timed(function: Callable[..., Any], seconds: list[float]) -> Callable[..., Any]:
    """``function``, appending the seconds of each call to ``seconds``."""

    def run(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        result = function(*args, **kwargs)
        seconds.append(time.perf_counter() - started)
        return result

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=2, help="LiTS-size cases to segment")
    parser.add_argument("--slices", type=int, default=160, help="slices of each case")
    parser.add_argument("--train-cases", type=int, default=5, help="training phantoms")
    parser.add_argument(
        "--train-slices", type=int, default=160, help="slices of each 256x256 training phantom"
    )
    parser.add_argument(
        "--spacing",
        type=float,
        nargs=3,
        default=[2.0, 2.0, 3.0],
        metavar="MM",
        help="the model's target voxel size (x y z, mm)",
    )
    parser.add_argument("--epochs", type=int, default=4, help="training epochs")
    parser.add_argument("--iterations", type=int, default=20, help="steps per epoch")
    parser.add_argument("--roi", type=int, default=48, help="patch and window size (cube)")
    parser.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap")
    parser.add_argument("--factor", type=int, help="coarse downsampling (default: the model's)")
    parser.add_argument("--margin", type=float, help="box margin, mm (default: the model's)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each mode")
    parser.add_argument("--model", type=Path, help="a trained model directory (skips training)")
    args = parser.parse_args()

    import torch

    from medseg.datasets import discover
    from medseg.datasets.synthetic import synthesize
    from medseg.pipelines.model_dir import open_model
    from medseg.pipelines.prediction.coarse_to_fine import CoarseToFine
    from medseg.pipelines.prediction.segmenter import Segmenter

    header("Coarse-to-fine inference against the full sliding-window pass, LiTS-size CT")
    work = Path(tempfile.mkdtemp(prefix="medseg-c2f-"))
    cpu = torch.device("cpu")
    try:
        model = args.model or train_model(work, args)
        config, network = open_model(model)
        inference = config.inference
        factor = args.factor or inference.coarse_factor
        margin = inference.coarse_margin_mm if args.margin is None else args.margin
        segmenters = {
            "full": Segmenter([(config, network)], cpu, coarse_to_fine=False),
            "c2f": Segmenter([(config, network)], cpu, coarse_to_fine=True),
        }
        method = CoarseToFine(factor, margin, config.postprocessing)
        regions: list[Any] = []
        stage: dict[str, list[float]] = {"full": [], "c2f": []}
        # the stage coarse-to-fine changes: the probabilities on the preprocessed grid
        full_stage = segmenters["full"]._mean_probabilities
        segmenters["full"]._mean_probabilities = timed(full_stage, stage["full"])

        def probabilities(*args: Any, **kwargs: Any) -> Any:
            result = method.probabilities(*args, **kwargs)
            regions.append(result[1])
            return result

        stage_c2f = timed(probabilities, stage["c2f"])
        segmenters["c2f"].coarse_to_fine = SimpleNamespace(probabilities=stage_c2f)
        cases_root = work / "cases"
        synthesize("lits", cases_root, cases=args.cases, shape=(512, 512, args.slices), seed=1)
        rows, stage_ratios, infer_ratios, changes = [], [], [], []
        for case in discover("lits", cases_root).cases:
            truth = np.asarray(nib.load(case.label).dataobj)
            loaded = {mode: segmenter.load(case) for mode, segmenter in segmenters.items()}
            for seconds in stage.values():
                seconds.clear()
            whole: dict[str, list[float]] = {"full": [], "c2f": []}
            results = {}
            for repeat in range(args.repeats):
                for mode in ("full", "c2f") if repeat % 2 == 0 else ("c2f", "full"):
                    started = time.perf_counter()
                    results[mode] = segmenters[mode].infer(loaded[mode])
                    whole[mode].append(time.perf_counter() - started)
            region = regions[-1]
            spatial = loaded["full"]["image"].shape[1:]
            if region is None:
                fine = "full pass (fallback)"
            else:
                share = math.prod(part.stop - part.start for part in region.crop)
                fine = "x".join(str(part.stop - part.start) for part in region.crop)
                fine += f" ({100 * share / math.prod(spatial):.0f} %)"
            labels = {mode: result.labels for mode, result in results.items()}
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
                    "x".join(str(size) for size in spatial),
                    fine,
                    _medians(stage),
                    f"{stage_ratio:.2f}x",
                    _medians(whole),
                    f"{infer_ratio:.2f}x",
                    f"{results['full'].windows} / {results['c2f'].windows}",
                    f"{full_dice:.4f} / {c2f_dice:.4f}",
                    f"{agreement:.4f}",
                ]
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"{args.cases} LiTS-size case(s) of 512x512x{args.slices}; tiny 3D UNet++ at "
        f"{'x'.join(f'{mm:g}' for mm in config.preprocessing.spacing or [])} mm, "
        f"roi {'x'.join(map(str, inference.roi_size))}, overlap {inference.overlap}; coarse "
        f"pass {factor}x coarser per axis, margin {margin:g} mm; median of {args.repeats} "
        "alternating runs; full / coarse-to-fine\n"
    )
    columns = [
        "case",
        "preprocessed",
        "fine crop",
        "probabilities s",
        "speed-up",
        "infer s",
        "speed-up",
        "windows",
        "liver Dice vs truth",
        "Dice c2f vs full",
    ]
    print(markdown_table(columns, rows))
    speedup, change = statistics.median(infer_ratios), max(changes, key=abs)
    fast = "PASS" if speedup >= TARGET_SPEEDUP else "MISS"
    same = "PASS" if abs(change) <= TARGET_DICE_CHANGE else "MISS"
    print(
        f"\n{fast}: Segmenter.infer {speedup:.2f}x faster (median; target >= "
        f"{TARGET_SPEEDUP}x); the probabilities stage {statistics.median(stage_ratios):.2f}x"
    )
    print(f"{same}: liver Dice change {change:+.4f} at most (target within {TARGET_DICE_CHANGE})")


if __name__ == "__main__":
    main()
