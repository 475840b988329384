"""Training throughput: ``medseg train`` against a plain MONAI training loop.

Both sides train the same network (the README demo's 3D UNet++: ``tiny`` preset with
features 8-16-32-64 and batch norm, seeded) on the same generated BraTS cases (the same
fold-0 training split), with the same batch (``batch_size`` volumes x ``samples_per_case``
random patches each), the same patch size, the same transforms (load, orientation,
foreground crop, z-score, positive/negative patch sampling, flips, intensity scale and
shift; MONAI's ``ConvertToMultiChannelBasedOnBratsClassesd`` for the regions) and the same
loss (batch Dice + BCE over the deep-supervision heads weighted by halves), AdamW and
gradient clipping, with the deterministic steps cached in memory (``CacheDataset``) and
the same number of ``DataLoader`` workers. The plain loop is written as MONAI's tutorials
write it, in PyTorch's default NCDHW memory format; a second run of it with the network and
batches in ``channels_last_3d`` (NDHWC, which ``medseg train`` uses for 3D networks by
default, ``train.channels_last``) shows how much of the difference that one setting makes.

Samples per second are patches per second of the epoch loop alone, the median over the
epochs after the first (start-up, caching and the final validation are outside it).
``medseg train`` computes them itself (``train/samples_per_second``, read back from
``checkpoint_last.pt``); the MONAI loop times its epochs the same way. Where time goes:
both sides also clock the time spent waiting for the next batch (``medseg train`` through
a wrapper around its loader that only reads the clock), the rest is compute (forward,
loss, backward, optimizer step). Each side is its own process; the sides alternate.

    .venv/bin/python benchmarks/train_throughput.py           # about 2 minutes on a quiet machine
    .venv/bin/python benchmarks/train_throughput.py --quick   # fewer cases, epochs and steps
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# The helpers sit beside this script (not in a package); Python puts the script's own
# folder first on ``sys.path``, so they import as a top-level module.
from _common import (
    PYTHON,
    REPOSITORY,
    each_wait_policy,
    gib,
    header,
    markdown_table,
    measured_run,
    median,
    require_success,
    thread_arguments,
)

SIDES = ("MONAI loop", "MONAI loop, channels_last_3d", "medseg train")
MARKER = "THROUGHPUT "


class TimedLoader:
    """A loader whose iteration clocks the seconds spent waiting for each batch."""

    def __init__(self, loader: object) -> None:
        self.loader = loader
        self.waiting = 0.0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        batches = iter(self.loader)
        while True:
            started = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                return
            self.waiting += time.perf_counter() - started
            yield batch


def medseg_child(arguments: list[str]) -> None:
    """Run ``medseg train`` with ``arguments`` in this process, its training loader wrapped
    in ``TimedLoader``; print the loader's waiting time per epoch as one JSON line."""
    from medseg import cli
    from medseg.pipelines.training import trainer

    loaders: list[TimedLoader] = []
    original = trainer.training_loader

    def timed_training_loader(*args: object, **kwargs: object) -> tuple:
        loader, sampler = original(*args, **kwargs)
        loaders.append(TimedLoader(loader))
        return loaders[-1], sampler

    epochs: list[float] = []
    original_epoch = trainer.Trainer._train_epoch

    def timed_epoch(self: trainer.Trainer, epoch: int) -> dict[str, float]:
        before = loaders[-1].waiting
        metrics = original_epoch(self, epoch)
        epochs.append(loaders[-1].waiting - before)
        return metrics

    trainer.training_loader = timed_training_loader
    trainer.Trainer._train_epoch = timed_epoch
    sys.argv = ["medseg", *arguments]
    try:
        cli.main()
    except SystemExit as done:
        if done.code:
            raise
    print(MARKER + json.dumps({"waiting": epochs}))


def monai_transforms(patch: list[int], samples: int) -> Any:
    """The demo's transforms as a MONAI tutorial writes them: deterministic steps, then the
    random patches and augmentation of medseg's defaults."""
    from monai import transforms as mt

    keys = ["image", "label"]
    return mt.Compose(
        [
            mt.LoadImaged(keys, ensure_channel_first=True, image_only=True),
            mt.EnsureTyped(keys, dtype="float32"),
            mt.Orientationd(keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
            mt.CropForegroundd(keys, source_key="image", select_fn=lambda x: x > 0),
            mt.NormalizeIntensityd("image", nonzero=True, channel_wise=True),
            mt.SpatialPadd(keys, spatial_size=patch),
            mt.RandCropByPosNegLabeld(
                keys, "label", spatial_size=patch, pos=0.67, neg=0.33, num_samples=samples
            ),
            mt.RandFlipd(keys, prob=0.5, spatial_axis=0),
            mt.RandFlipd(keys, prob=0.5, spatial_axis=1),
            mt.RandFlipd(keys, prob=0.5, spatial_axis=2),
            mt.RandScaleIntensityd("image", factors=0.1, prob=0.5),
            mt.RandShiftIntensityd("image", offsets=0.1, prob=0.5),
            mt.ConvertToMultiChannelBasedOnBratsClassesd("label"),
        ]
    )


def monai_child(settings: dict) -> None:
    """The plain MONAI training loop on ``settings``; prints samples/s and waiting per epoch."""
    import torch
    from monai.data import CacheDataset, DataLoader
    from monai.losses import DiceLoss

    from medseg.datasets import discover
    from medseg.datasets.splits import kfold_splits
    from medseg.networks import build_network

    index = discover("brats", settings["root"])
    split = kfold_splits([c.id for c in index.cases], 5, 0)[0]
    cases = [c.as_dict() for c in index.cases if c.id in set(split["train"])]
    transforms = monai_transforms(settings["patch"], settings["samples"])
    transforms.set_random_state(seed=0)
    dataset = CacheDataset(cases, transforms, progress=False)
    loader = TimedLoader(
        DataLoader(
            dataset,
            batch_size=settings["batch"],
            shuffle=True,
            drop_last=True,
            num_workers=settings["workers"],
        )
    )
    torch.manual_seed(0)
    network = build_network(
        "unetpp",
        spatial_dims=3,
        in_channels=4,
        out_channels=3,
        preset="tiny",
        features=[8, 16, 32, 64],
        norm="batch",
    )
    dice = DiceLoss(sigmoid=True, batch=True)
    cross_entropy = torch.nn.BCEWithLogitsLoss()
    optimizer = torch.optim.AdamW(network.parameters(), lr=0.01, weight_decay=1e-5)
    memory_format = torch.contiguous_format
    if settings["channels_last"]:
        memory_format = torch.channels_last_3d
        network = network.to(memory_format=memory_format)
    network.train()
    rates, waiting = [], []
    for _ in range(settings["epochs"]):
        started, samples, before, steps = time.perf_counter(), 0, loader.waiting, 0
        while steps < settings["steps"]:
            for batch in loader:
                image = batch["image"].as_tensor().contiguous(memory_format=memory_format)
                label = batch["label"].as_tensor().float()
                heads = network(image)
                weights = [0.5**k for k in range(len(heads))]
                loss = sum(
                    w / sum(weights) * (dice(h, label) + cross_entropy(h, label))
                    for w, h in zip(weights, heads, strict=True)
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(network.parameters(), 12.0)
                optimizer.step()
                samples += image.shape[0]
                steps += 1
                if steps == settings["steps"]:
                    break
        rates.append(samples / (time.perf_counter() - started))
        waiting.append(loader.waiting - before)
    print(MARKER + json.dumps({"rates": rates, "waiting": waiting}))


def medseg_rates(run_dir: Path) -> list[float]:
    """``train/samples_per_second`` of every epoch, from the run's last checkpoint."""
    import torch

    state = torch.load(run_dir / "checkpoint_last.pt", weights_only=True)
    return [row["train/samples_per_second"] for row in state["history"]]


def parse_marker(output: str) -> dict:
    """The JSON a child printed after ``MARKER``."""
    line = next(line for line in output.splitlines() if line.startswith(MARKER))
    return json.loads(line[len(MARKER) :])


def command(side: str, work: Path, args: argparse.Namespace, attempt: int) -> list[str]:
    """The command line of one side."""
    settings = {
        "root": str(work / "data"),
        "patch": [args.patch] * 3,
        "samples": args.samples,
        "batch": args.batch,
        "workers": args.workers,
        "epochs": args.epochs,
        "steps": args.steps,
    }
    if side.startswith("MONAI loop"):
        settings["channels_last"] = "channels_last" in side
        return [PYTHON, __file__, "--monai-child", json.dumps(settings)]
    overrides = {
        "data.root": settings["root"],
        "output": str(work / f"run{attempt}"),
        "transforms.patch_size": json.dumps(settings["patch"]),
        "transforms.samples_per_case": args.samples,
        "train.batch_size": args.batch,
        "train.num_workers": args.workers,
        "train.epochs": args.epochs,
        "train.iterations_per_epoch": args.steps,
        "train.val_every": args.epochs,
        "tracking.enabled": "false",
    }
    sets = [part for key, value in overrides.items() for part in ("--set", f"{key}={value}")]
    config = str(REPOSITORY / "configs" / "demo.yaml")
    return [PYTHON, __file__, "--medseg-child", "-q", "train", config, *sets]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs and one repeat")
    parser.add_argument("--cases", type=int, default=10, help="generated BraTS cases")
    parser.add_argument("--shape", type=int, nargs=3, default=[128, 128, 96], help="case size")
    parser.add_argument("--patch", type=int, default=32, help="patch size (cube)")
    parser.add_argument("--samples", type=int, default=4, help="patches per case")
    parser.add_argument("--batch", type=int, default=2, help="volumes per step")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers, both sides")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run")
    parser.add_argument("--steps", type=int, default=4, help="steps per epoch")
    parser.add_argument("--repeats", type=int, default=1, help="runs per side (order alternates)")
    thread_arguments(parser)
    if len(sys.argv) > 1 and sys.argv[1] == "--medseg-child":
        medseg_child(sys.argv[2:])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--monai-child":
        monai_child(json.loads(sys.argv[2]))
        return
    args = parser.parse_args()
    if args.quick:
        args.cases, args.epochs, args.steps, args.repeats = 6, 2, 3, 1

    header("Training throughput: medseg train against a plain MONAI loop", args.threads)
    work = Path(tempfile.mkdtemp(prefix="medseg-train-bench-"))
    try:
        each_wait_policy(args, lambda environment: run_benchmark(work, args, environment))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_benchmark(work: Path, args: argparse.Namespace, environment: dict[str, str]) -> None:
    """Generate the data (once), run both sides ``args.repeats`` times in ``environment``
    and print the table."""
    from medseg.datasets.synthetic import synthesize

    if not (work / "data").exists():
        synthesize("brats", work / "data", cases=args.cases, shape=tuple(args.shape), seed=2)
    patches = args.batch * args.samples
    print(
        f"data: {args.cases} generated BraTS cases of 4x{'x'.join(map(str, args.shape))} "
        f"(fold 0: {args.cases * 4 // 5} for training); network: UNet++ tiny 8-16-32-64, "
        f"batch norm; batch {args.batch} volumes x {args.samples} patches of {args.patch}^3 "
        f"= {patches} patches per step; {args.steps} steps per epoch, {args.epochs} epochs; "
        f"DataLoader workers: {args.workers}\n"
    )
    results: dict[str, list[dict]] = {side: [] for side in SIDES}
    for repeat in range(args.repeats):
        for side in SIDES if repeat % 2 == 0 else SIDES[::-1]:
            shutil.rmtree(work / f"run{repeat}", ignore_errors=True)
            run = measured_run(command(side, work, args, repeat), env=environment)
            require_success(run, side)
            found = parse_marker(run.output)
            if side == "medseg train":
                found["rates"] = medseg_rates(work / f"run{repeat}")
            steady = slice(1, None) if args.epochs > 1 else slice(None)
            rate = median(found["rates"][steady])
            waiting = median(found["waiting"][steady])
            epoch_seconds = args.steps * patches / rate
            results[side].append(
                {"rate": rate, "waiting": waiting, "epoch": epoch_seconds, "rss": run.peak_rss}
            )
            print(f"  {side}: {rate:.2f} samples/s", flush=True)
    baseline = median([r["rate"] for r in results["MONAI loop"]])
    rows = []
    for side in SIDES:
        rate = median([r["rate"] for r in results[side]])
        epoch = median([r["epoch"] for r in results[side]])
        waiting = median([r["waiting"] for r in results[side]])
        rows.append(
            [
                side,
                rate,
                f"{rate / baseline:.2f}x",
                epoch,
                f"{waiting:.2f} ({100 * waiting / epoch:.0f} %)",
                f"{epoch - waiting:.2f} ({100 * (epoch - waiting) / epoch:.0f} %)",
                gib(max(r["rss"] for r in results[side])),
            ]
        )
    print()
    columns = ["side", "samples/s", "x MONAI", "epoch s", "data loading s", "compute s"]
    print(markdown_table([*columns, "peak RSS GiB"], rows))
    ratio = median([r["rate"] for r in results["medseg train"]]) / baseline
    print(
        f"\nmedians over {args.repeats} run(s) per side of the epochs after the first; data "
        "loading: time waiting for the next batch; compute: the rest of the epoch."
    )
    verdict = "PASS" if ratio >= 1.0 else "MISS"
    print(f"\n{verdict}: medseg train at {ratio:.2f}x the MONAI loop's samples/s (target >= 1.0x)")


if __name__ == "__main__":
    main()
