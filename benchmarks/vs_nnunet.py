"""Batch prediction: ``medseg predict`` against nnU-Net v2's ``nnUNetPredictor``.

Both sides segment the same generated cases with the same network and weights (the model
directory's untrained, seeded UNet++, or a trained model directory given by
``--brats-model`` / ``--lits-model``): BraTS-size MRI (4 x 240 x 240 x 155) and LiTS-size
CT in Hounsfield units (512 x 512 x Z). nnU-Net gets the network by
``manual_initialization``, with plans written from the model directory's preprocessing:
the same target spacing (linear interpolation, as medseg's), the same intensity rule
(MRI: ``ZScoreNormalization`` over the non-zero mask, the closest nnU-Net has to medseg's
``zscore_body``; CT: ``CTNormalization`` with the model's fitted window, mean and std),
the same patch size, step ``1 - overlap``, Gaussian blending, no mirroring, the CPU. Images
are read with ``NibabelIOWithReorient`` (RAS, as medseg) and transposed back to medseg's
axis order, so both feed the network the same axes. Its region outputs are reordered outer
to inner (whole tumour, core, enhancing), the order nnU-Net paints regions in, as medseg
paints them. nnU-Net runs its standard path, ``predict_from_files`` (reading and
preprocessing in a worker process, resampling and writing in another), with one worker each
and ``nnUNet_def_n_proc`` set to the thread count. Each side runs as its own process (wall
time, the largest process's peak RSS, and the whole process tree's peak memory, sampled),
pairs alternate, and the label maps are compared voxel by voxel, with each side's Dice
against the generated ground truth and where the differing voxels lie (near a label
boundary, outside the body). medseg runs its default backend (``auto``: torch for the tiny
preset, OpenVINO for small; the ONNX export is made before the timed runs); ``--torch-row``
adds ``--backend torch``. Both sides run with the same thread settings, under each
OMP_WAIT_POLICY by default. ``--diagnose`` first compares the two preprocessings and the
two sliding windows in this process, on the first case of each dataset.

nnunetv2 is a benchmark extra: ``.venv/bin/pip install -c constraints.txt -e '.[bench]'``.

    .venv/bin/python benchmarks/vs_nnunet.py            # 1 + 1 full-size cases, 2 pairs
    .venv/bin/python benchmarks/vs_nnunet.py --quick    # 4x128x128x96 and 256x256x32, 1 pair
    .venv/bin/python benchmarks/vs_nnunet.py --preset small --torch-row --diagnose
    .venv/bin/python benchmarks/vs_nnunet.py --brats-model runs/brats/model --lits-cases 0
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

# The helpers sit beside this script (not in a package); Python puts the script's own
# folder first on ``sys.path``, so they import as top-level modules.
from _common import (
    MEDSEG,
    PYTHON,
    each_wait_policy,
    gib,
    header,
    markdown_table,
    measured_run,
    median,
    require_success,
    thread_arguments,
    thread_settings,
    warm_export_cache,
)
from predict_vs_monai import case_id, dataset_arguments, prepare

INSTALL = ".venv/bin/pip install -c constraints.txt -e '.[bench]'"
CONFIGURATION = "3d_fullres"
NNUNET = "nnU-Net predictor"
MEDSEG_SIDE = "medseg predict"
TORCH_SIDE = "medseg predict --backend torch"
# nnU-Net sizes its torch thread pools by this variable (default 8), read when nnunetv2 is
# first imported.
NNUNET_THREADS = "nnUNet_def_n_proc"
# Distances (voxels of the written label map, the largest axis offset) from a label boundary
# at which differing voxels are counted.
BOUNDARY_VOXELS = (1, 2)
TIME_TARGET = 0.4
AGREEMENT_TARGET = 0.999


def channel_files(config: Any, case: Path) -> list[Path]:
    """The image files of one input: a BraTS case folder's channels in the model's order,
    or the CT file itself."""
    if case.is_dir():
        return [case / f"{case.name}_{name}.nii.gz" for name in config.preprocessing.channels]
    return [case]


def nnunet_plans(config: Any) -> tuple[dict, dict, list[int]]:
    """nnU-Net plans, dataset.json and output-channel order that reproduce the model
    directory's preprocessing and label painting (``config``: its ``ModelConfig``).

    Axes: ``NibabelIOWithReorient`` gives RAS arrays in (z, y, x) order; the transpose
    (2, 1, 0) returns medseg's (x, y, z). Regions: nnU-Net paints output channel k with
    ``regions_class_order[k]`` in channel order, so the channels are reordered into
    medseg's ``paint_order``; classes keep their order.
    """
    from medseg.datasets.base import LabelScheme

    pre, window = config.preprocessing, config.inference
    if not pre.spacing:
        raise SystemExit("the nnU-Net plans need the model's target spacing; this model has none")
    rule = pre.normalization_rule
    channels = len(pre.channels)
    # zscore_body has no nnU-Net counterpart; on skull-stripped MRI, zero outside the brain,
    # its body differs from the non-zero mask only in the smoothed edge's band of voxels.
    if rule in ("zscore_nonzero", "zscore_body"):
        schemes, masked = ["ZScoreNormalization"] * channels, [True] * channels
        properties: dict[str, dict] = {str(c): {} for c in range(channels)}
    elif rule == "ct_window":
        stats = pre.intensity
        schemes, masked = ["CTNormalization"], [False]
        properties = {
            "0": {
                "mean": stats["mean"],
                "std": stats["std"],
                "percentile_00_5": stats["window_low"],
                "percentile_99_5": stats["window_high"],
            }
        }
    else:
        raise SystemExit(f"no nnU-Net normalisation written here for medseg's {rule!r}")
    # Linear interpolation for images and probabilities, as medseg's Spacingd; nnU-Net
    # resamples the low-resolution axis on its own (nearest) above an anisotropy of 3,
    # medseg above 3 too (ANISOTROPY_RATIO).
    linear = {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None}
    resampling = "resample_data_or_seg_to_shape"
    plans = {
        "dataset_name": "Dataset999_medseg",
        "plans_name": "medsegPlans",
        "original_median_spacing_after_transp": list(pre.spacing),
        "original_median_shape_after_transp": list(pre.patch_size),
        "image_reader_writer": "NibabelIOWithReorient",
        "transpose_forward": [2, 1, 0],
        "transpose_backward": [2, 1, 0],
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": properties,
        "configurations": {
            CONFIGURATION: {
                "data_identifier": "medseg",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": window.sw_batch_size,
                "patch_size": list(window.roi_size),
                "median_image_size_in_voxels": list(pre.patch_size),
                "spacing": list(pre.spacing),
                "normalization_schemes": schemes,
                "use_mask_for_norm": masked,
                "resampling_fn_data": resampling,
                "resampling_fn_data_kwargs": linear,
                "resampling_fn_seg": resampling,
                "resampling_fn_seg_kwargs": {**linear, "is_seg": True},
                "resampling_fn_probabilities": resampling,
                "resampling_fn_probabilities_kwargs": linear,
                "architecture": {
                    "network_class_name": "medseg",
                    "arch_kwargs": {},
                    "_kw_requires_import": [],
                },
                "batch_dice": False,
            }
        },
    }
    scheme = LabelScheme.from_dict(config.labels)
    labels: dict[str, Any]
    if scheme.mode == "regions":
        order = list(scheme.paint_order)
        labels = {"background": 0} | {scheme.names[k]: list(scheme.values[k]) for k in order}
        painted = [scheme.paint[k] for k in order]
    else:  # the scheme's first class is the background
        order = list(range(len(scheme.names)))
        labels = {name: values[0] for name, values in zip(scheme.names, scheme.values, strict=True)}
        painted = None
    dataset = {
        "channel_names": {str(k): name for k, name in enumerate(pre.channels)},
        "labels": labels,
        "numTraining": 0,
        "file_ending": ".nii.gz",
        **({"regions_class_order": painted} if painted else {}),
    }
    return plans, dataset, order


def reordered(network: Any, order: list[int]) -> Any:
    """``network`` whose output channels come in ``order``: the same weights, one index."""
    import torch

    class Reordered(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.network = network
            self.register_buffer("order", torch.tensor(order), persistent=False)

        def forward(self, windows: torch.Tensor) -> torch.Tensor:
            return self.network(windows).index_select(1, self.order)

    return Reordered()


def nnunet_predictor(model: Path) -> Any:
    """An ``nnUNetPredictor`` around the network and weights of the model directory
    ``model``, with plans from ``nnunet_plans``, ready for ``predict_from_files``."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from medseg.pipelines.model_dir import load_model_dir

    config, network = load_model_dir(model)
    plans, dataset, order = nnunet_plans(config)
    network = reordered(network, order).eval()
    window = config.inference
    predictor = nnUNetPredictor(
        tile_step_size=1 - window.overlap,
        use_gaussian=window.mode == "gaussian",
        use_mirroring=False,
        perform_everything_on_device=False,
        device=torch.device("cpu"),
        allow_tqdm=False,
    )
    plans_manager = PlansManager(plans)
    predictor.manual_initialization(
        network,
        plans_manager,
        plans_manager.get_configuration(CONFIGURATION),
        [network.state_dict()],
        dataset,
        "medseg",
        None,
    )
    return predictor


def nnunet_side(model: Path, output: Path, inputs: list[Path]) -> None:
    """nnU-Net's standard batch path: segment ``inputs`` (BraTS case folders or CT files)
    into ``output``/<case id>.nii.gz with the model directory ``model``'s network."""
    from medseg.pipelines.model_dir import read_model_config

    config = read_model_config(model)
    predictor = nnunet_predictor(model)
    predictor.predict_from_files(
        [[str(f) for f in channel_files(config, case)] for case in inputs],
        [str(output / case_id(case)) for case in inputs],
        num_processes_preprocessing=1,
        num_processes_segmentation_export=1,
    )


def agreement(first: Path, second: Path, inputs: list[Path]) -> float:
    """The smallest share, over cases, of voxels whose labels are equal in the two
    folders' label maps (0 where the shapes differ)."""
    import nibabel as nib

    worst = 1.0
    for name in (f"{case_id(path)}.nii.gz" for path in inputs):
        a = np.asarray(nib.load(first / name).dataobj)
        b = np.asarray(nib.load(second / name).dataobj)
        worst = min(worst, float((a == b).mean()) if a.shape == b.shape else 0.0)
    return worst


def ground_truth(case: Path) -> Path:
    """The generated label map of one input: a BraTS case folder's ``_seg`` file, or the
    ``segmentation-N.nii`` beside a CT ``volume-N.nii``."""
    if case.is_dir():
        return case / f"{case.name}_seg.nii.gz"
    return case.with_name(case.name.replace("volume", "segmentation"))


def truth_dice(model: Path, output: Path, inputs: list[Path]) -> str:
    """Dice of each structure of the model directory ``model``'s labels (its regions, or
    its classes but the background) in ``output``'s label maps against the generated
    ground truth, mean over cases, as ``name Dice`` pairs."""
    import nibabel as nib

    from medseg.datasets.base import LabelScheme
    from medseg.pipelines.model_dir import read_model_config

    scheme = LabelScheme.from_dict(read_model_config(model).labels)
    first = 0 if scheme.mode == "regions" else 1
    names, values = scheme.names[first:], scheme.values[first:]
    scores: dict[str, list[float]] = {name: [] for name in names}
    for case in inputs:
        labels = np.asarray(nib.load(output / f"{case_id(case)}.nii.gz").dataobj)
        truth = np.asarray(nib.load(ground_truth(case)).dataobj)
        for name, members in zip(names, values, strict=True):
            a, b = np.isin(labels, members), np.isin(truth, members)
            total = int(a.sum()) + int(b.sum())
            scores[name].append(2 * int((a & b).sum()) / total if total else 1.0)
    return ", ".join(f"{name} {np.mean(dice):.3f}" for name, dice in scores.items())


def where_they_differ(
    name: str, side: str, model: Path, first: Path, second: Path, inputs: list[Path]
) -> list[str]:
    """Where ``first``'s (nnU-Net's) and ``second``'s label maps differ, over all cases:
    how many voxels, the share of them within ``BOUNDARY_VOXELS`` of a label boundary of
    either map, and the share outside the body (CT under -500 HU; MRI zero in every
    channel). One line, and for a model with post-processing a second one with that
    post-processing applied to nnU-Net's labels too (medseg applies it by default)."""
    import nibabel as nib

    from medseg.datasets.base import LabelScheme
    from medseg.pipelines.model_dir import read_model_config
    from medseg.pipelines.prediction.postprocess import postprocess
    from medseg.transforms.presets import CT_BODY_THRESHOLD

    config = read_model_config(model)
    rules, scheme = config.postprocessing, LabelScheme.from_dict(config.labels)
    variants = ["", "nnU-Net's labels post-processed too: "]
    variants = variants if any(rules.model_dump().values()) else variants[:1]
    counts = {variant: np.zeros(2 + len(BOUNDARY_VOXELS), dtype=np.int64) for variant in variants}
    total = 0
    for case in inputs:
        image_a = nib.load(first / f"{case_id(case)}.nii.gz")
        a = np.asarray(image_a.dataobj)
        b = np.asarray(nib.load(second / f"{case_id(case)}.nii.gz").dataobj)
        images = [np.asarray(nib.load(f).dataobj) for f in channel_files(config, case)]
        if config.preprocessing.modality == "ct":
            body = images[0] > CT_BODY_THRESHOLD
        else:
            body = np.any([image != 0 for image in images], axis=0)
        total += a.size
        for variant in variants:
            if variant:
                voxel_ml = float(np.prod(image_a.header.get_zooms()[:3])) / 1000
                a = postprocess(a, scheme, rules, voxel_ml)
            counts[variant] += differences(a, b, body)
    lines = []
    for variant, (differ, outside, *near) in counts.items():

        def share(count: int, differ: int = differ) -> str:
            return f"{100 * count / max(differ, 1):.1f} %"

        lines.append(
            f"{name}: {side}: {variant}{differ} of {total} voxels differ from nnU-Net's "
            f"({100 * differ / total:.3f} %); of them "
            f"{' / '.join(share(count) for count in near)} within "
            f"{' / '.join(map(str, BOUNDARY_VOXELS))} voxels of a label boundary (either map), "
            f"{share(outside)} outside the body"
        )
    return lines


def differences(a: np.ndarray, b: np.ndarray, body: np.ndarray) -> np.ndarray:
    """Counts of the voxels where label maps ``a`` and ``b`` differ: all, outside ``body``
    (a mask of the same shape), and within each of ``BOUNDARY_VOXELS`` (the largest axis
    offset) of a voxel of another label in ``a`` or in ``b``."""
    from scipy import ndimage

    differ = a != b
    counts = [int(differ.sum()), int((differ & ~body).sum())]
    for distance in BOUNDARY_VOXELS:
        size = 2 * distance + 1
        edge = np.zeros(a.shape, dtype=bool)
        for labels in (a, b):
            edge |= ndimage.maximum_filter(labels, size) != ndimage.minimum_filter(labels, size)
        counts.append(int((differ & edge).sum()))
    return np.array(counts, dtype=np.int64)


def diagnose(dataset: dict) -> list[str]:
    """Where the two pipelines part, on ``dataset``'s first case, in this process: the
    preprocessed arrays (shape, largest difference), then both sliding windows on
    medseg's preprocessed array (windows, and the share of equal labels on that grid)."""
    import torch
    from monai.data import MetaTensor

    from medseg.datasets.base import LabelScheme
    from medseg.pipelines.inference import sliding_window_predict
    from medseg.pipelines.model_dir import load_model_dir
    from medseg.transforms.labels import paint_labels
    from medseg.transforms.presets import inference_transforms

    model, case = dataset["model"], dataset["inputs"][0]
    config, network = load_model_dir(model)
    files = [str(f) for f in channel_files(config, case)]
    ours = inference_transforms(config.preprocessing)({"image": files})["image"]
    ours = ours.as_tensor() if isinstance(ours, MetaTensor) else torch.as_tensor(ours)
    predictor = nnunet_predictor(model)
    preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
    theirs, _, _ = preprocessor.run_case(
        files,
        None,
        predictor.plans_manager,
        predictor.configuration_manager,
        predictor.dataset_json,
    )
    lines = [f"{dataset['name']}, {case_id(case)}:"]
    if tuple(ours.shape) == tuple(theirs.shape):
        difference = float((ours - torch.from_numpy(theirs)).abs().max())
        lines.append(
            f"  preprocessed: both {list(ours.shape)}; largest difference {difference:.3g}"
        )
    else:
        lines.append(
            f"  preprocessed: medseg {list(ours.shape)}, nnU-Net {list(theirs.shape)} (differ)"
        )
    window, scheme = config.inference, LabelScheme.from_dict(config.labels)
    with torch.no_grad():
        medseg_logits = sliding_window_predict(
            network,
            ours[None],
            roi_size=window.roi_size,
            overlap=window.overlap,
            sw_batch_size=window.sw_batch_size,
            mode=window.mode,
        )[0]
        nnunet_logits = predictor.predict_sliding_window_return_logits(ours).float()
    order = torch.tensor(nnunet_plans(config)[2])
    inverse = torch.argsort(order)
    nonlinear = torch.sigmoid if scheme.mode == "regions" else lambda x: torch.softmax(x, 0)
    a = paint_labels(nonlinear(medseg_logits), scheme)
    b = paint_labels(nonlinear(nnunet_logits.index_select(0, inverse)), scheme)
    steps = len(predictor._internal_get_sliding_window_slicers(ours.shape[1:]))
    lines.append(
        f"  sliding window on medseg's array: {steps} nnU-Net windows; labels equal on "
        f"{100 * float((a == b).mean()):.3f} % of voxels; largest logit difference "
        f"{float((medseg_logits - nnunet_logits.index_select(0, inverse)).abs().max()):.3g}"
    )
    return lines


def command(side: str, dataset: dict, output: Path) -> list[str]:
    """The command line of one side on one dataset."""
    inputs = [str(p) for p in dataset["inputs"]]
    model = str(dataset["model"])
    if side == NNUNET:
        return [PYTHON, __file__, "--baseline", model, str(output), *inputs]
    backend = ["--backend", "torch"] if side == TORCH_SIDE else []
    return [
        MEDSEG,
        "-q",
        "predict",
        model,
        *inputs,
        "--output",
        str(output),
        "--overwrite",
        *backend,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    dataset_arguments(parser, cases=1)
    parser.add_argument("--repeats", type=int, default=2, help="pairs per dataset (alternating)")
    parser.add_argument("--torch-row", action="store_true", help="also medseg --backend torch")
    parser.add_argument("--diagnose", action="store_true", help="compare the steps first")
    thread_arguments(parser)
    parser.add_argument("--quick", action="store_true", help="4x128x128x96, 256x256x32, 1 pair")
    parser.add_argument("--work", type=Path, help="keep data and outputs here (default: temp)")
    parser.add_argument("--baseline", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if importlib.util.find_spec("nnunetv2") is None:
        raise SystemExit(f"nnunetv2 is not installed; install the benchmark extra: {INSTALL}")
    if args.baseline:
        model, output, *inputs = args.baseline
        nnunet_side(Path(model), Path(output), [Path(p) for p in inputs])
        return

    shapes: dict[str, Any] = {}
    if args.quick:
        args.brats_cases, args.lits_cases, args.slices, args.repeats = 1, 1, 32, 1
        shapes = {"brats_shape": (128, 128, 96), "ct_side": 256}
    header("Batch predict: medseg against nnU-Net v2's predictor", args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="medseg-bench-"))
    try:
        datasets = prepare(work, args, **shapes)
        for dataset in datasets:
            trained = getattr(args, f"{dataset['layout']}_model")
            dataset["model"] = trained.resolve() if trained else dataset["model"]
            dataset["trained"] = trained is not None
            dataset["backend"] = warm_export_cache(dataset["model"], work / "cache")
        if args.diagnose:
            os.environ[NNUNET_THREADS] = str(args.threads)
            print("### where the pipelines part (this process, first case)\n")
            for dataset in datasets:
                print("\n".join(diagnose(dataset)), flush=True)
            print()
        summaries = each_wait_policy(
            args,
            lambda environment: run_benchmark(work, args, datasets, environment),
            extra={NNUNET_THREADS: str(args.threads)},
        )
        print("\n".join(["", *(line for summary in summaries for line in summary)]))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


def run_benchmark(
    work: Path, args: argparse.Namespace, datasets: list[dict], environment: dict[str, str]
) -> list[str]:
    """Run the sides ``args.repeats`` times per dataset in ``environment`` (order
    alternating), print the table and a PASS/MISS line per target; return one summary
    line per dataset."""
    names = [NNUNET, MEDSEG_SIDE, *([TORCH_SIDE] if args.torch_row else [])]
    for dataset in datasets:
        print(f"{dataset['name']}: {model_line(dataset)}")
    print(
        "Gaussian blending, no mirroring; nnU-Net: 1 window per forward (its only choice); "
        "nnU-Net workers: 1 preprocessing, 1 export\n"
    )
    rows, verdicts, summary, located = [], [], [], []
    for dataset in datasets:
        runs: dict[str, list] = {name: [] for name in names}
        for repeat in range(args.repeats):
            for name in names if repeat % 2 == 0 else names[::-1]:
                output = folder(work, dataset, name)
                shutil.rmtree(output, ignore_errors=True)
                output.mkdir(parents=True)
                run = measured_run(command(name, dataset, output), env=environment, tree=True)
                require_success(run, f"{name} on {dataset['name']}")
                runs[name].append(run)
                print(f"  {dataset['name']}, {name}: {run.seconds:.1f} s", flush=True)
        reference = folder(work, dataset, NNUNET)
        for name in names:
            ratios = [a.seconds / b.seconds for a, b in zip(runs[name], runs[NNUNET], strict=True)]
            equal = agreement(reference, folder(work, dataset, name), dataset["inputs"])
            backend = {MEDSEG_SIDE: f"auto: {dataset['backend']}", TORCH_SIDE: "torch"}
            rows.append(
                [
                    dataset["name"],
                    len(dataset["inputs"]),
                    name,
                    backend.get(name, "torch"),
                    median([r.seconds for r in runs[name]]),
                    f"{median(ratios):.2f}x",
                    gib(max(r.peak_rss for r in runs[name])),
                    gib(max(r.tree_peak for r in runs[name])),
                    f"{100 * equal:.3f} %",
                    truth_dice(dataset["model"], folder(work, dataset, name), dataset["inputs"]),
                ]
            )
            if name != NNUNET:
                located += where_they_differ(
                    dataset["name"],
                    name,
                    dataset["model"],
                    reference,
                    folder(work, dataset, name),
                    dataset["inputs"],
                )
                verdicts += verdict_lines(dataset["name"], name, median(ratios), equal)
                summary.append(
                    f"{thread_settings(environment)}: {dataset['name']}: {name} at "
                    f"{median(ratios):.2f}x nnU-Net's predictor"
                )
    print()
    columns = ["data", "cases", "side", "backend", "wall s", "x nnU-Net", "peak RSS GiB"]
    print(markdown_table([*columns, "tree peak GiB", "labels = nnU-Net", "Dice vs truth"], rows))
    print("\nwall s: the whole process (start-up, reading, preprocessing, sliding window, back to")
    print("the input grid, writing), median of the repeats; x nnU-Net: median of the per-pair")
    print("ratios; peak RSS: the largest single process (wait4); tree peak: the process and its")
    print("workers together (sum of proportional set sizes, sampled every 0.2 s); labels: the")
    print("share of voxels with equal labels, the smallest over cases; Dice vs truth: each")
    print("structure's (region's or class's) Dice against the generated ground truth, mean")
    print("over cases.\n")
    print("\n".join(located))
    print()
    print("\n".join(verdicts))
    print()
    return summary


def folder(work: Path, dataset: dict, side: str) -> Path:
    """The output folder of one side on one dataset."""
    name = side.replace(" ", "_").replace("-", "")
    return work / "out" / dataset["layout"] / name


def model_line(dataset: dict) -> str:
    """What a dataset's model directory holds: trained (its path and validation Dice) or
    untrained, network, window, spacing, intensity rule and post-processing."""
    from medseg.pipelines.model_dir import read_model_config

    config = read_model_config(dataset["model"])
    pre, window, network = config.preprocessing, config.inference, config.network
    features = "/".join(map(str, network.options.get("features", [])))
    validation = ", ".join(
        f"{key.removeprefix('val/dice/')} {value}"
        for key, value in config.provenance.get("validation", {}).items()
        if key.startswith("val/dice/")
    )
    rules = {k: v for k, v in config.postprocessing.model_dump().items() if v}
    # nnunet_plans maps zscore_body to nnU-Net's z-score over the non-zero mask
    nnunet_rule = (
        " (nnU-Net: z-score over the non-zero mask)"
        if pre.normalization_rule == "zscore_body"
        else ""
    )
    trained = (
        f"trained, {dataset['model']} (validation Dice {validation})"
        if dataset["trained"]
        else "untrained, seeded"
    )
    return (
        f"{trained}; {network.name} {network.preset} (features {features or 'preset'}), roi "
        f"{'x'.join(map(str, window.roi_size))}, overlap {window.overlap} (nnU-Net step "
        f"{1 - window.overlap:g}), medseg {window.sw_batch_size} windows per forward, spacing "
        f"{'x'.join(f'{s:g}' for s in pre.spacing)} mm, {pre.normalization_rule} "
        f"normalisation{nnunet_rule}, post-processing {rules or 'none'} (medseg only)"
    )


def verdict_lines(name: str, side: str, ratio: float, equal: float) -> list[str]:
    """PASS/MISS lines of one side on one dataset: wall time <= 0.4x nnU-Net's, labels
    equal on >= 99.9 % of voxels."""
    return [
        f"{'PASS' if ratio <= TIME_TARGET else 'MISS'}: {name}: {side} at {ratio:.2f}x "
        f"nnU-Net's predictor's wall time (target <= {TIME_TARGET}x)",
        f"{'PASS' if equal >= AGREEMENT_TARGET else 'MISS'}: {name}: {side}'s labels equal "
        f"nnU-Net's on {100 * equal:.3f} % of voxels (target >= {100 * AGREEMENT_TARGET:g} %)",
    ]


if __name__ == "__main__":
    main()
