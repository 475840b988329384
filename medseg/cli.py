"""The ``medseg`` command. Heavy libraries (torch, MONAI, MLflow) load inside commands.

Every command reports a problem as one line on stderr and exits 2 for unusable
arguments, config or model, 1 when some cases failed (the rest done); ``--debug`` adds the
traceback.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from medseg import __version__
from medseg.errors import MedsegError

app = typer.Typer(
    name="medseg",
    help="Medical image segmentation: synth, check, train, predict, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state = {"debug": False}
LAYOUT_NAMES = ("brats", "lits", "msd", "em", "isic", "folder")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"medseg {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Warnings and errors only.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Medical image segmentation with UNet++, H-DenseUNet, Swin UNETR and Att-SwinU-Net."""
    _state["debug"] = debug
    from rich.console import Console
    from rich.logging import RichHandler

    handler = RichHandler(console=Console(stderr=True), show_path=False, show_time=False)
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(message)s",
        handlers=[handler],
        force=True,
    )
    # MONAI's LoadImage logs an INFO line for every reader that declines a file.
    for noisy in ("mlflow", "alembic", "urllib3", "matplotlib", "PIL", "LoadImage", "torch.onnx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # MONAI warns on every LoadImage that its GPU DICOM decoder is missing: never an error
    # here, DICOM series still load with pydicom's own decoders.
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)


def _console() -> Any:
    from rich.console import Console

    # soft_wrap: long paths stay whole on one line instead of being broken at the width.
    return Console(soft_wrap=True)


@app.command()
def synth(
    layout: Annotated[
        str, typer.Argument(help="Layout to write: brats, lits, msd, nnunet, em or isic.")
    ],
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the cases into.")],
    cases: Annotated[int, typer.Option(min=1, help="Number of cases.")] = 4,
    shape: Annotated[
        str | None,
        typer.Option(help="Size X Y [Z] (default: the real dataset's, e.g. 240 240 155)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed; case i is the same for any N.")] = 0,
    overwrite: Annotated[
        bool, typer.Option(help="Write into a non-empty folder, replacing same-named files.")
    ] = False,
) -> None:
    """Write realistic phantom cases in a public dataset's exact on-disk layout."""
    from medseg.datasets.synthetic import synthesize

    size = _parse_shape(shape) if shape else None
    written = synthesize(layout, out_dir, cases=cases, shape=size, seed=seed, overwrite=overwrite)
    logging.getLogger("medseg").info("wrote %d %s cases to %s", len(written), layout, out_dir)


def _parse_shape(text: str) -> tuple[int, ...]:
    parts = [p for p in re.split(r"[x, ]+", text.strip()) if p]
    if not parts or not all(p.isdigit() for p in parts):
        raise typer.BadParameter(f"{text!r}: expected sizes like 240 240 155", param_hint="--shape")
    return tuple(int(p) for p in parts)


@app.command()
def check(
    layout: Annotated[str, typer.Argument(help=f"One of {', '.join(LAYOUT_NAMES)}.")],
    directory: Annotated[Path, typer.Argument(help="Dataset root.")],
) -> None:
    """Report every unusable case of a dataset at once (exit 0 clean, 1 problems found)."""
    from medseg.datasets import discover

    index = discover(layout, directory, validate=True)
    console = _console()
    for problem in index.problems:
        console.print(f"[red]problem[/red] {problem}", highlight=False)
    console.print(
        f"{directory}: {len(index.cases)} usable cases, {len(index.problems)} with problems",
        highlight=False,
    )
    if index.problems:
        raise typer.Exit(1)


@app.command()
def plan(
    layout: Annotated[str, typer.Argument(help=f"One of {', '.join(LAYOUT_NAMES)}.")],
    root: Annotated[Path, typer.Argument(help="Dataset root.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder for fingerprint.json and plan.json.")
    ] = Path("plan"),
    memory_gb: Annotated[
        float | None,
        typer.Option(
            min=0.001, help="Training memory budget (default: half the RAM, or the GPU's)."
        ),
    ] = None,
    network: Annotated[str, typer.Option(help="Network to plan for.")] = "unetpp",
    preset: Annotated[str, typer.Option(help="Its preset: paper, small or tiny.")] = "small",
    device: Annotated[str, typer.Option(help="cpu or cuda: whose memory the budget is.")] = "cpu",
) -> None:
    """Fingerprint a dataset and plan spacing, normalisation, patch, batch and pooling."""
    from medseg.config import parse_config
    from medseg.pipelines.planner import plan_dataset

    if device not in ("cpu", "cuda"):
        raise typer.BadParameter(f"{device!r}: use cpu or cuda", param_hint="--device")
    settings = parse_config(
        {
            "data": {"layout": layout, "root": str(root)},
            "network": {"name": network, "preset": preset},
            "train": {"memory_gb": memory_gb, "device": device},
        },
        "medseg plan",
    )
    planned = plan_dataset(settings, output)
    decided = planned.plan
    console = _console()
    console.print(
        f"{decided['cases']} cases: spacing {decided['spacing']}, {decided['normalization']}, "
        f"patch {decided['patch_size']}, batch {decided['batch_size']}, about "
        f"{decided['memory_estimate_gb']:.2f} GB of {decided['memory_budget_gb']:.2f} GB",
        highlight=False,
    )
    console.print(
        f"wrote {output / 'fingerprint.json'} and {output / 'plan.json'}", highlight=False
    )


@app.command()
def train(
    config: Annotated[
        Path | None, typer.Argument(help="YAML config (optional with --resume).")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a key: --set train.epochs=3 (repeatable)."),
    ] = None,
    resume: Annotated[
        Path | None, typer.Option(help="Continue the run (or cross-validation) in this folder.")
    ] = None,
    folds: Annotated[
        str | None, typer.Option(help="'all': train every fold and summarise them.")
    ] = None,
    register: Annotated[
        str | None, typer.Option(help="Register the model in MLflow's registry as NAME.")
    ] = None,
) -> None:
    """Train a network; logs to MLflow and writes a model directory."""
    from medseg.config import load_config

    overrides = list(set_ or [])
    if register:
        overrides.append(f"train.register_as={register}")
    if folds not in (None, "all"):
        raise typer.BadParameter("only 'all' is supported; pick one fold with --set data.fold=K")
    if resume is not None:
        source = config or _resolved_config(resume)
        settings = load_config(source, [*overrides, f"output={resume}"])
    elif config is None:
        raise typer.BadParameter("give a CONFIG file, or --resume RUN_DIR", param_hint="CONFIG")
    else:
        settings = load_config(config, overrides)
    from medseg.pipelines import train as training

    console = _console()
    if folds == "all":
        summary = training.train_folds(settings)
        for name in summary["mean"]:
            console.print(
                f"{name}: {summary['mean'][name]:.4f} +/- {summary['std'][name]:.4f} over "
                f"{len(summary['folds'])} folds",
                highlight=False,
            )
        console.print(f"summary: {settings.output / 'cross_validation.json'}", highlight=False)
        return
    result = training.train(settings, resume=resume is not None)
    console.print(
        f"best validation Dice {result.best_metric:.4f} (epoch {result.best_epoch + 1})",
        highlight=False,
    )
    console.print(f"model directory: {result.model_dir}", highlight=False)
    if result.run_id:
        console.print(f"MLflow run {result.run_id} at {result.tracking_uri}", highlight=False)
        console.print(
            f"open the UI: mlflow ui --backend-store-uri {result.tracking_uri}", highlight=False
        )


def _resolved_config(run_dir: Path) -> Path:
    """The resolved config a run (or the first fold of a cross-validation) wrote."""
    for candidate in (run_dir / "config.yaml", run_dir / "fold_0" / "config.yaml"):
        if candidate.exists():
            return candidate
    return run_dir / "config.yaml"


@app.command()
def predict(
    model: Annotated[
        str,
        typer.Argument(
            help="Model directory, checkpoint, runs:/ or models:/ URI; several comma-separated "
            "(or a cross-validation folder) are ensembled."
        ),
    ],
    inputs: Annotated[list[str], typer.Argument(help="Files, folders or globs to segment.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the label maps.")],
    overlap: Annotated[
        float | None, typer.Option(min=0.0, max=0.95, help="Sliding-window overlap.")
    ] = None,
    tta: Annotated[bool, typer.Option(help="Average over mirrored inputs (slower).")] = False,
    prune_level: Annotated[
        int | None, typer.Option(min=1, max=4, help="UNet++: use head L only.")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    precision: Annotated[
        str, typer.Option(help="auto (half on CUDA, fp32 on CPU), fp32, fp16 or bf16.")
    ] = "auto",
    skip_empty: Annotated[
        bool, typer.Option(help="Reuse one answer for all constant (background) windows.")
    ] = True,
    postprocess: Annotated[bool, typer.Option(help="Apply the model's post-processing.")] = True,
    save_probabilities: Annotated[
        bool, typer.Option(help="Also write <case>_probabilities.npz (float16).")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Redo cases whose output exists.")] = False,
    coarse_to_fine: Annotated[
        bool | None,
        typer.Option(
            help="Find the foreground on a downsampled pass, then segment only around it "
            "(default: the model's infer.coarse_to_fine)."
        ),
    ] = None,
) -> None:
    """Segment volumes onto their own grid; exit 1 when some cases failed."""
    from medseg.pipelines.predict import predict as run_prediction

    report = run_prediction(
        model,
        inputs,
        output,
        overlap=overlap,
        prune_level=prune_level,
        device=device,
        precision=precision,
        tta=tta,
        skip_empty=skip_empty,
        apply_postprocessing=postprocess,
        save_probabilities=save_probabilities,
        overwrite=overwrite,
        coarse_to_fine=coarse_to_fine,
    )
    done = [c for c in report.cases if c.status == "done"]
    skipped = sum(c.status == "skipped" for c in report.cases)
    windows = sum(c.windows for c in done)
    reused = sum(c.skipped_windows for c in done)
    console = _console()
    console.print(
        f"{len(done)} segmented, {skipped} already done, {report.failed} failed -> {output} "
        f"({windows} windows, {reused} empty ones reused)",
        highlight=False,
    )
    for case in report.cases:
        if case.status == "failed":
            console.print(f"[red]failed[/red] {case.error}", highlight=False)
    if report.failed:
        raise typer.Exit(1)


@app.command()
def evaluate(
    pred_dir: Annotated[Path, typer.Argument(help="Folder of predicted <case_id>.nii.gz.")],
    ref_dir: Annotated[Path, typer.Argument(help="Dataset root or folder of reference labels.")],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Report folder (default PRED_DIR/evaluation)."),
    ] = None,
    layout: Annotated[
        str | None, typer.Option(help="Layout of REF_DIR (default: detected).")
    ] = None,
    labels: Annotated[
        str | None,
        typer.Option(help="For plain label folders: name=value,... e.g. liver=1,tumour=2."),
    ] = None,
    tolerance: Annotated[float, typer.Option(min=0.0, help="Surface Dice tolerance (mm).")] = 1.0,
    one_empty: Annotated[
        str,
        typer.Option(help="HD95/ASSD when one mask is empty: diagonal (BraTS) or nan (flagged)."),
    ] = "diagonal",
    workers: Annotated[int, typer.Option(min=1, help="Parallel processes.")] = 2,
    track: Annotated[bool, typer.Option(help="Log the report to MLflow.")] = False,
) -> None:
    """Score predictions against references: Dice, IoU, HD95, ASSD, surface Dice."""
    from medseg.pipelines.evaluate import evaluate as run_evaluation
    from medseg.pipelines.evaluate import track_evaluation
    from medseg.pipelines.metrics import EmptyRule
    from medseg.pipelines.references import find_references

    rule = EmptyRule(one_empty_distance=one_empty)
    if output is not None:
        from medseg.files import require_outside

        require_outside(output, [ref_dir], "--output")

    references = find_references(ref_dir, layout=layout, labels=labels)
    result = run_evaluation(
        pred_dir,
        references.labels,
        references.scheme,
        output or pred_dir / "evaluation",
        images=references.images,
        tolerance_mm=tolerance,
        rule=rule,
        workers=workers,
    )
    _print_evaluation(result)
    if track:
        track_evaluation(result)
    if result.problems:
        raise typer.Exit(1)


@app.command()
def prune(
    model: Annotated[str, typer.Argument(help="A trained UNet++ model (directory or URI).")],
    data: Annotated[Path, typer.Argument(help="Labelled cases to measure on (dataset folder).")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder for the report and model/.")
    ],
    tolerance: Annotated[
        float,
        typer.Option(min=0.0, help="Mean Dice the chosen level may lose against the deepest."),
    ] = 0.01,
    levels: Annotated[str | None, typer.Option(help="Levels to measure, e.g. 1,2,3,4.")] = None,
    repeats: Annotated[int, typer.Option(min=1, help="Timed runs per level.")] = 3,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    precision: Annotated[str, typer.Option(help="auto, fp32, fp16 or bf16.")] = "auto",
    layout: Annotated[
        str | None, typer.Option(help="Layout of DATA (default: the model's).")
    ] = None,
    track: Annotated[bool, typer.Option(help="Log the table, plot and level to MLflow.")] = False,
    windows: Annotated[
        int, typer.Option(min=1, help="Windows drawn from the cases to time each level on.")
    ] = 8,
) -> None:
    """Measure every UNet++ pruning level and write the smallest that keeps the Dice."""
    from medseg.pipelines.prune import parse_levels
    from medseg.pipelines.prune import prune as run_pruning
    from medseg.pipelines.prune_report import pruning_table, track_pruning

    result = run_pruning(
        model,
        data,
        output,
        tolerance=tolerance,
        levels=parse_levels(levels) if levels else None,
        repeats=repeats,
        device=device,
        precision=precision,
        layout=layout,
        show_progress=True,
        windows=windows,
    )
    console = _console()
    console.print(pruning_table(result))
    console.print(
        f"chosen level L{result.chosen_level}; pruned model: {result.paths['model']}",
        highlight=False,
    )
    if track:
        track_pruning(result)


@app.command()
def export(
    model: Annotated[str, typer.Argument(help="Model directory, checkpoint or MLflow URI.")],
    format_: Annotated[
        str, typer.Option("--format", "-f", help="torchscript or onnx.")
    ] = "torchscript",
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder for the exported files.")
    ] = Path("export"),
    prune_level: Annotated[
        int | None, typer.Option(min=1, max=4, help="UNet++: export head L only.")
    ] = None,
) -> None:
    """Write a file that runs without medseg, checked against medseg's own forward."""
    if format_ not in ("torchscript", "onnx"):
        raise typer.BadParameter("use torchscript or onnx", param_hint="--format")
    from medseg.pipelines.export import export_model

    result = export_model(model, format_, output, prune_level=prune_level)
    console = _console()
    console.print(f"wrote {result.file} and {result.preprocessing}", highlight=False)
    console.print(
        f"checked against medseg's forward on {list(result.input_shape)}: "
        f"max abs error {result.max_abs_error:.2e}",
        highlight=False,
    )


@app.command()
def info(
    model: Annotated[str, typer.Argument(help="Model directory, checkpoint or MLflow URI.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Network, parameters, labels, preprocessing, training metrics and provenance."""
    from medseg.pipelines.info import info_table, model_info

    details = model_info(model)
    if as_json:
        import json

        typer.echo(json.dumps(details, indent=2))
        return
    _console().print(info_table(details))


def _print_evaluation(result: Any) -> None:
    from rich.table import Table

    table = Table(title="evaluation (mean over cases)")
    for column in ("label", "cases", "Dice", "IoU", "HD95 mm", "ASSD mm", "surface Dice"):
        table.add_column(column, justify="left" if column == "label" else "right")
    for name, stats in result.summary["labels"].items():
        if not isinstance(stats, dict) or "dice" not in stats:
            continue
        cells = [stats[m]["mean"] for m in ("dice", "iou", "hd95", "assd", "nsd")]
        table.add_row(name, str(stats["dice"]["count"]), *(_number(c) for c in cells))
    console = _console()
    console.print(table)
    console.print(f"report: {result.paths['metrics_csv'].parent}", highlight=False)
    for problem in result.problems:
        console.print(f"[red]problem[/red] {problem}", highlight=False)


def _number(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _join_shape_arguments(argv: list[str]) -> list[str]:
    """Let ``--shape 240 240 155`` (DESIGN.md's form) reach typer as one value."""
    joined: list[str] = []
    index = 0
    while index < len(argv):
        token = argv[index]
        joined.append(token)
        index += 1
        if token == "--shape":
            sizes = []
            while index < len(argv) and argv[index].isdigit():
                sizes.append(argv[index])
                index += 1
            joined.append(" ".join(sizes))
    return joined


def main() -> None:
    """Entry point of the ``medseg`` console script."""
    import warnings

    # MONAI warns on every reader set-up that an optional GPU DICOM decoder is absent.
    warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
    try:
        app(args=_join_shape_arguments(sys.argv[1:]), prog_name="medseg", standalone_mode=True)
    except MedsegError as error:
        if _state["debug"]:
            raise
        typer.echo(f"error: {error}", err=True)
        sys.exit(error.exit_code)
    except Exception as error:
        if _state["debug"]:
            raise
        typer.echo(f"error: {type(error).__name__}: {error} (--debug shows where)", err=True)
        sys.exit(1)
