"""Batch prediction: ``medseg predict`` against a plain MONAI inference loop.

Both sides segment the same generated cases with the same model directory (an untrained,
seeded network): BraTS-size MRI (4 x 240 x 240 x 155) and LiTS-size CT in Hounsfield units
(512 x 512 x Z). The MONAI loop is written as MONAI's tutorials write it: ``LoadImaged``,
``EnsureChannelFirstd``, ``Orientationd``, ``Spacingd``, the model's foreground crop and
intensity steps, a ``DataLoader`` whose worker prepares the next case, then
``sliding_window_inference`` (same roi, overlap, window batch and Gaussian blending),
``Activationsd``, ``Invertd``, ``AsDiscreted`` and ``SaveImage``. Each side runs as its own
process (wall time and peak RSS are that process's), the sides alternate, and the label
maps they write are compared by Dice per label value. medseg runs its default backend
(``auto``), whose ONNX export is made before the timed runs (once per model). Both sides
run with the same thread settings (``--threads``, OMP_NUM_THREADS, and OMP_WAIT_POLICY),
printed with the results; by default the whole comparison runs once under each wait
policy, since the MONAI loop's data-loading worker competes with busy-waiting
(``active``) compute threads.

    .venv/bin/python benchmarks/predict_vs_monai.py           # 2 + 2 cases: about 10 minutes
    .venv/bin/python benchmarks/predict_vs_monai.py --quick   # 1 + 1 case: about 5 minutes
    .venv/bin/python benchmarks/predict_vs_monai.py --brats-cases 3 --lits-cases 3 --repeats 2
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np

# The helpers sit beside this script (not in a package); Python puts the script's own
# folder first on ``sys.path``, so they import as a top-level module.
from _common import (
    MEDSEG,
    PYTHON,
    ct_intensity,
    each_wait_policy,
    gib,
    header,
    label_dice,
    markdown_table,
    measured_run,
    model_dir,
    require_success,
    thread_arguments,
    thread_settings,
    warm_export_cache,
    window_arguments,
)


def monai_loop(model: Path, output: Path, inputs: list[Path], workers: int) -> None:
    """The plain MONAI way: segment ``inputs`` (BraTS case folders or CT files) into
    ``output`` with the network and settings of the model directory ``model``."""
    import torch
    from monai import transforms as mt
    from monai.data import DataLoader, Dataset, MetaTensor, decollate_batch
    from monai.inferers import sliding_window_inference

    from medseg.pipelines.model_dir import load_model_dir
    from medseg.transforms.labels import paint_labels
    from medseg.transforms.presets import ZScoreBodyd, is_above_background, is_body

    config, network = load_model_dir(model)
    pre, window, scheme = config.preprocessing, config.inference, config.scheme
    if pre.modality == "mri" and pre.normalization_rule == "zscore_body":
        # the rule medseg's planner picks for MRI with much background (a trained model's);
        # MONAI has no transform for it, so the loop uses medseg's
        files = [[c / f"{c.name}_{name}.nii.gz" for name in pre.channels] for c in inputs]
        crop = mt.CropForegroundd(
            "image", source_key="image", select_fn=is_above_background, allow_smaller=True
        )
        intensity = [ZScoreBodyd("image")]
    elif pre.modality == "mri":
        files = [[c / f"{c.name}_{name}.nii.gz" for name in pre.channels] for c in inputs]
        crop = mt.CropForegroundd("image", source_key="image", allow_smaller=True)
        intensity = [mt.NormalizeIntensityd("image", nonzero=True, channel_wise=True)]
    else:
        files = [[path] for path in inputs]
        crop = mt.CropForegroundd(
            "image", source_key="image", select_fn=is_body, allow_smaller=True
        )
        stats = pre.intensity
        intensity = [
            mt.ThresholdIntensityd(
                "image", threshold=stats["window_high"], above=False, cval=stats["window_high"]
            ),
            mt.ThresholdIntensityd(
                "image", threshold=stats["window_low"], above=True, cval=stats["window_low"]
            ),
            mt.NormalizeIntensityd("image", subtrahend=stats["mean"], divisor=stats["std"]),
        ]
    spacing = pre.spacing or []
    if spacing and max(spacing) >= 3 * min(spacing):
        raise SystemExit("the baseline mirrors one Spacingd; use a spacing with ratio < 3")
    preprocess = mt.Compose(
        [
            mt.LoadImaged("image"),
            mt.EnsureChannelFirstd("image"),
            mt.Orientationd("image", axcodes="RAS"),
            *([mt.Spacingd("image", pixdim=spacing, mode="bilinear")] if spacing else []),
            crop,
            *intensity,
        ]
    )
    regions = scheme.mode == "regions"
    postprocess = mt.Compose(
        [
            mt.Activationsd("pred", sigmoid=regions, softmax=not regions),
            mt.Invertd("pred", transform=preprocess, orig_keys="image", nearest_interp=False),
        ]
    )
    cases = [
        {"image": [str(f) for f in channel_files], "id": case_id(path)}
        for path, channel_files in zip(inputs, files, strict=True)
    ]
    loader = DataLoader(Dataset(cases, preprocess), batch_size=1, num_workers=workers)
    network.eval()
    with torch.no_grad():
        for batch in loader:
            batch["pred"] = sliding_window_inference(
                batch["image"],
                window.roi_size,
                window.sw_batch_size,
                network,
                overlap=window.overlap,
                mode=window.mode,
            )
            for item in decollate_batch(batch):
                item = postprocess(item)
                pred = item["pred"]
                labels = torch.from_numpy(paint_labels(pred, scheme))
                save = mt.SaveImage(
                    output_dir=output,
                    output_postfix="",
                    separate_folder=False,
                    output_dtype=np.uint8,
                    print_log=False,
                    output_name_formatter=lambda meta, saver, name=item["id"]: {
                        "subject": name,
                        "idx": None,
                    },
                )
                save(MetaTensor(labels[None], meta=pred.meta))


def case_id(path: Path) -> str:
    """The id ``medseg predict`` gives an input: a BraTS case folder's name, a file's stem."""
    return path.name if path.is_dir() else path.name.removesuffix(".gz").removesuffix(".nii")


def prepare(
    work: Path,
    args: argparse.Namespace,
    *,
    brats_shape: tuple[int, int, int] = (240, 240, 155),
    ct_side: int = 512,
) -> list[dict]:
    """Generate the cases (BraTS of ``brats_shape``, CT of ``ct_side`` x ``ct_side`` x
    ``args.slices``) and a model directory per dataset (``args.brats_model`` or
    ``args.lits_model`` where given); return one entry per dataset: ``name``, ``layout``,
    ``model``, ``inputs``."""
    from medseg.datasets.synthetic import synthesize

    datasets = []
    if args.brats_cases:
        root = work / "brats"
        synthesize("brats", root, cases=args.brats_cases, shape=brats_shape, seed=1)
        model = args.brats_model or model_dir(
            work / "model-brats",
            layout="brats",
            preset=args.preset,
            roi_size=[args.roi] * 3,
            spacing=[1.0, 1.0, 1.0],
            overlap=args.overlap,
            sw_batch_size=args.sw_batch_size,
        )
        inputs = sorted(p for p in root.iterdir() if p.is_dir())
        name = "BraTS 4x" + "x".join(map(str, brats_shape))
        datasets.append({"name": name, "layout": "brats", "model": model, "inputs": inputs})
    if args.lits_cases:
        root = work / "lits"
        shape = (ct_side, ct_side, args.slices)
        synthesize("lits", root, cases=args.lits_cases, shape=shape, seed=1)
        model = args.lits_model or model_dir(
            work / "model-lits",
            layout="lits",
            preset=args.preset,
            roi_size=[args.roi] * 3,
            spacing=args.lits_spacing,
            overlap=args.overlap,
            sw_batch_size=args.sw_batch_size,
            intensity=ct_intensity(root),
        )
        inputs = sorted(root.glob("volume-*.nii"))
        name = f"LiTS {ct_side}x{ct_side}x{args.slices} CT"
        datasets.append({"name": name, "layout": "lits", "model": model, "inputs": inputs})
    return datasets


def dataset_arguments(parser: argparse.ArgumentParser, *, cases: int) -> None:
    """Add what ``prepare`` reads: ``--brats-cases`` and ``--lits-cases`` (default
    ``cases`` each), ``--slices``, ``--lits-spacing``, ``--preset``, the window settings
    (roi 64, overlap 0.25, 2 windows per forward) of the untrained models, and
    ``--brats-model`` / ``--lits-model`` (a trained model instead, with its own settings)."""
    parser.add_argument("--brats-cases", type=int, default=cases, help="BraTS-size cases")
    parser.add_argument("--lits-cases", type=int, default=cases, help="LiTS-size cases")
    parser.add_argument("--slices", type=int, default=48, help="Z of the 512x512xZ CT cases")
    parser.add_argument(
        "--lits-spacing", type=float, nargs=3, default=[1.5, 1.5, 3.0], help="CT model spacing"
    )
    parser.add_argument("--preset", default="tiny", help="UNet++ preset (untrained)")
    for name in ("brats", "lits"):
        parser.add_argument(
            f"--{name}-model",
            type=Path,
            help=f"a trained model directory for the {name} cases (default: an untrained one)",
        )
    window_arguments(parser, overlap=0.25, sw_batch_size=2)


SIDES = ("MONAI loop", "medseg predict")
TIME_TARGET = 0.7
DICE_TARGET = 0.99
FAST_TIME_TARGET = 0.4
AGREEMENT_TARGET = 0.999


def command(side: str, dataset: dict, output: Path, args: argparse.Namespace) -> list[str]:
    """The command line of one side on one dataset."""
    inputs = [str(p) for p in dataset["inputs"]]
    model = str(dataset["model"])
    if side == "MONAI loop":
        workers = str(args.loader_workers)
        return [PYTHON, __file__, "--baseline", model, str(output), workers, *inputs]
    return [MEDSEG, "-q", "predict", model, *inputs, "--output", str(output), "--overwrite"]


def compare_outputs(first: Path, second: Path, inputs: list[Path]) -> tuple[float, float]:
    """Two folders of label maps compared: the smallest Dice over cases and label values,
    and the share of voxels (0-1, over all cases) whose labels are equal."""
    import nibabel as nib

    worst, equal, total = 1.0, 0, 0
    for name in (f"{case_id(path)}.nii.gz" for path in inputs):
        a = np.asarray(nib.load(first / name).dataobj)
        b = np.asarray(nib.load(second / name).dataobj)
        if a.shape != b.shape:
            return 0.0, 0.0
        worst = min([worst, *label_dice(a, b).values()])
        equal, total = equal + int((a == b).sum()), total + a.size
    return worst, equal / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    dataset_arguments(parser, cases=2)
    parser.add_argument("--loader-workers", type=int, default=1, help="MONAI DataLoader workers")
    parser.add_argument("--repeats", type=int, default=1, help="runs per side (order alternates)")
    thread_arguments(parser)
    parser.add_argument("--quick", action="store_true", help="one case of each, Z = 32")
    parser.add_argument("--work", type=Path, help="keep data and outputs here (default: temp)")
    parser.add_argument("--baseline", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline:
        model, output, workers, *inputs = args.baseline
        monai_loop(Path(model), Path(output), [Path(p) for p in inputs], int(workers))
        return

    if args.quick:
        args.brats_cases, args.lits_cases, args.slices, args.repeats = 1, 1, 32, 1
    header("Batch predict: medseg against a plain MONAI loop", args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="medseg-bench-"))
    try:
        datasets = prepare(work, args)
        for dataset in datasets:
            warm_export_cache(dataset["model"], work / "cache")
        summaries = each_wait_policy(
            args, lambda environment: run_benchmark(work, args, datasets, environment)
        )
        print("\n".join(["", *(line for summary in summaries for line in summary)]))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


def run_benchmark(
    work: Path, args: argparse.Namespace, datasets: list[dict], environment: dict[str, str]
) -> list[str]:
    """Run both sides ``args.repeats`` times per dataset in ``environment``, print the
    table and a PASS/MISS line per target; return one summary line per dataset."""
    names = list(SIDES)
    print(f"MONAI DataLoader workers: {args.loader_workers}; Gaussian blending")
    for dataset in datasets:
        print(f"- {dataset['name']}: {describe_model(dataset['model'])}")
    print()
    rows, verdicts, totals = [], [], {name: [] for name in names}
    for dataset in datasets:
        runs: dict[str, list] = {name: [] for name in names}
        for repeat in range(args.repeats):
            for name in names if repeat % 2 == 0 else names[::-1]:
                output = work / "out" / dataset["model"].name / name.replace(" ", "_")
                shutil.rmtree(output, ignore_errors=True)
                run = measured_run(command(name, dataset, output, args), env=environment)
                require_success(run, f"{name} on {dataset['name']}")
                runs[name].append(run)
                print(f"  {dataset['name']}, {name}: {run.seconds:.1f} s", flush=True)
        baseline = fastest(runs["MONAI loop"])
        reference = work / "out" / dataset["model"].name / "MONAI_loop"
        dice: dict[str, float] = {}
        equal: dict[str, float] = {}
        for name in names:
            seconds = fastest(runs[name])
            totals[name].append(seconds)
            output = work / "out" / dataset["model"].name / name.replace(" ", "_")
            dice[name], equal[name] = compare_outputs(reference, output, dataset["inputs"])
            rows.append(
                [
                    dataset["name"],
                    len(dataset["inputs"]),
                    name,
                    seconds,
                    seconds / len(dataset["inputs"]),
                    f"{seconds / baseline:.2f}x",
                    gib(max(r.peak_rss for r in runs[name])),
                    dice[name],
                    f"{100 * equal[name]:.3f} %",
                ]
            )
        verdicts += verdict_lines(
            dataset["name"],
            baseline,
            runs["medseg predict"],
            dice["medseg predict"],
            equal["medseg predict"],
        )
    for name in names:
        total = sum(totals[name])
        ratio = total / sum(totals["MONAI loop"])
        rows.append(["all", "", name, total, "", f"{ratio:.2f}x", "", "", ""])
    print()
    columns = ["data", "cases", "side", "wall s", "s/case", "x MONAI", "peak RSS GiB"]
    print(markdown_table([*columns, "min Dice vs MONAI", "labels = MONAI"], rows))
    print("\nwall s: the whole process (start-up, reading, inference, writing), the fastest of")
    print("the repeats; min Dice: the smallest over cases and label values; labels = MONAI:")
    print("the share of all voxels whose label equals the MONAI loop's.\n")
    print("\n".join(verdicts))
    print()
    settings = thread_settings(environment)
    return [
        f"{settings}: {row[0]}: medseg predict at {row[5]} the MONAI loop"
        for row in rows
        if row[2] == "medseg predict"
    ]


def describe_model(model: Path) -> str:
    """One line on a model directory: network, trained or not, windows, and the precision
    and backend ``medseg predict`` runs it with by default on this machine."""
    import torch

    from medseg.pipelines.inference import resolve_precision
    from medseg.pipelines.model_dir import read_model_config

    config = read_model_config(model)
    window = config.inference
    origin = f"trained, {model}" if "epoch" in config.provenance else "untrained, seeded"
    precision = resolve_precision("auto", torch.device("cpu"), [config])
    return (
        f"UNet++ {config.network.preset} ({origin}), "
        f"spacing {config.preprocessing.spacing}, roi {window.roi_size}, overlap "
        f"{window.overlap}, {window.sw_batch_size} windows per forward; bf16 agreement "
        f"{window.bf16_agreement}, so medseg's precision auto = "
        f"{'bf16' if precision == torch.bfloat16 else 'fp32'}"
    )


def fastest(runs: list) -> float:
    """The shortest wall time of ``runs``: on a shared machine other processes only ever add
    time, so the minimum is the estimate least disturbed by them."""
    return min(run.seconds for run in runs)


def verdict_lines(name: str, baseline: float, runs: list, dice: float, equal: float) -> list[str]:
    """PASS/MISS lines of one dataset: issue 1's targets (medseg's wall time <= 0.7x MONAI's,
    Dice >= 0.99) and issue 24's (<= 0.4x, labels equal on >= 99.9 % of voxels)."""
    ratio = fastest(runs) / baseline
    return [
        f"{'PASS' if ratio <= TIME_TARGET else 'MISS'}: {name}: medseg predict at "
        f"{ratio:.2f}x the MONAI loop's wall time (target <= {TIME_TARGET}x)",
        f"{'PASS' if dice >= DICE_TARGET else 'MISS'}: {name}: Dice between the two outputs "
        f"{dice:.4f} (target >= {DICE_TARGET})",
        f"{'PASS' if ratio <= FAST_TIME_TARGET and equal >= AGREEMENT_TARGET else 'MISS'}: "
        f"{name}: issue 24: {ratio:.2f}x (target <= {FAST_TIME_TARGET}x) with labels equal on "
        f"{100 * equal:.3f} % of voxels (target >= {100 * AGREEMENT_TARGET:g} %)",
    ]


if __name__ == "__main__":
    main()
