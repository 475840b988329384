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
from typing import Annotated, Any, cast

import typer

from medseg import __version__
from medseg.datasets import LAYOUT_NAMES
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


def _version(value: bool) -> None:
    if value:
        typer.echo(f"medseg {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks and other libraries' warnings.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Warnings and errors only.")] = False,
    log_file: Annotated[
        Path | None,
        typer.Option(help="Also append the log, as plain time-stamped lines, to this file."),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Medical image segmentation with UNet++, H-DenseUNet, Swin UNETR and Att-SwinU-Net."""
    _state["debug"] = debug
    from medseg.pipelines.console import configure

    try:
        configure(debug=debug, quiet=quiet, log_file=log_file)
    except OSError as error:
        reason = error.strerror or error
        raise typer.BadParameter(f"{log_file}: {reason}", param_hint="--log-file") from None


def _console() -> Any:
    from medseg.pipelines.console import output_console

    return output_console()


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
    from medseg.pipelines.training.planner import plan_dataset

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
    # Loading torch and MONAI takes seconds: a job log shows the run has started.
    logging.getLogger("medseg").info("training into %s", settings.output)
    from medseg.pipelines.bf16_agreement import after_training as bf16_agreement
    from medseg.pipelines.pruning.prune import after_training as pruning
    from medseg.pipelines.training import train as training

    after = [bf16_agreement, *([pruning] if settings.train.prune else [])]
    console = _console()
    if folds == "all":
        summary = training.train_folds(settings, after=after)
        for name in summary["mean"]:
            console.print(
                f"{name}: {summary['mean'][name]:.4f} +/- {summary['std'][name]:.4f} over "
                f"{len(summary['folds'])} folds",
                highlight=False,
            )
        console.print(f"summary: {settings.output / 'cross_validation.json'}", highlight=False)
        return
    result = training.train(settings, resume=resume is not None, after=after)
    console.print(
        f"best validation Dice {result.best_metric:.4f} (epoch {result.best_epoch})",
        highlight=False,
    )
    console.print(f"model directory: {result.model_dir}", highlight=False)
    for line in result.tracking_links:
        console.print(line, highlight=False)


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
            help="Model directory, run directory, package (.medseg.zip), checkpoint, runs:/ or "
            "models:/ URI; several comma-separated "
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
        str,
        typer.Option(
            help="auto (half on CUDA; on CPUs with AMX or AVX-512 BF16, bf16 for models "
            "whose labels training measured to survive it, else fp32), fp32, fp16 or bf16 "
            "(also on those CPUs)."
        ),
    ] = "auto",
    skip_empty: Annotated[
        bool, typer.Option(help="Reuse one answer for all constant (background) windows.")
    ] = True,
    postprocess: Annotated[bool, typer.Option(help="Apply the model's post-processing.")] = True,
    save_probabilities: Annotated[
        bool, typer.Option(help="Also write <case>_probabilities.npz (float16).")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Redo cases whose output exists.")] = False,
    output_format: Annotated[
        str | None,
        typer.Option(
            help="nifti, dicom-seg or both (default: both for DICOM series, nifti otherwise)."
        ),
    ] = None,
    series_modality: Annotated[
        list[str] | None,
        typer.Option(
            help="DICOM folder trees: modality of the series to segment, repeatable; 'any' "
            "for all (default: the model's, CT or MR)."
        ),
    ] = None,
    min_slices: Annotated[
        int, typer.Option(min=1, help="DICOM folder trees: fewest images a series needs.")
    ] = 5,
    num_parts: Annotated[
        int, typer.Option(min=1, help="Split the sorted cases into N parts (job arrays).")
    ] = 1,
    part_id: Annotated[
        int, typer.Option(min=0, help="Segment part I (0..N-1): case i goes to part i % N.")
    ] = 0,
    ray: Annotated[
        str | None,
        typer.Option(
            help="Segment on Ray: 'local' (start a runtime here), 'auto' (join this machine's "
            "cluster) or a cluster address; paths must be reachable from every node.",
            rich_help_panel="Ray",
        ),
    ] = None,
    ray_actors: Annotated[
        int, typer.Option(min=1, help="Models segmenting at once.", rich_help_panel="Ray")
    ] = 1,
    ray_cpus_per_actor: Annotated[
        float, typer.Option(min=0.0, help="CPUs each actor reserves.", rich_help_panel="Ray")
    ] = 1.0,
    ray_gpus_per_actor: Annotated[
        float, typer.Option(min=0.0, help="GPUs each actor reserves.", rich_help_panel="Ray")
    ] = 0.0,
    preview: Annotated[
        bool, typer.Option(help="Also draw previews/<case>.png: three slices with outlines.")
    ] = False,
    backend: Annotated[
        str,
        typer.Option(
            help="Where windows run on the CPU: torch, onnxruntime, openvino, or auto (the "
            "fastest measured to agree with torch for this network)."
        ),
    ] = "auto",
    coarse_to_fine: Annotated[
        bool | None,
        typer.Option(
            help="Find the foreground on a downsampled pass, then segment only around it "
            "(default: the model's infer.coarse_to_fine)."
        ),
    ] = None,
) -> None:
    """Segment volumes onto their own grid, with statistics.csv; exit 1 when some cases
    failed."""
    from medseg.pipelines.prediction.parts import Part
    from medseg.pipelines.prediction.predict import predict as run_prediction

    ray_options = None
    if ray is None and (ray_actors, ray_cpus_per_actor, ray_gpus_per_actor) != (1, 1.0, 0.0):
        raise typer.BadParameter("the --ray-* options need --ray", param_hint="--ray")
    if ray is not None:
        from medseg.pipelines.prediction.ray_predict import RayOptions

        ray_options = RayOptions(ray, ray_actors, ray_cpus_per_actor, ray_gpus_per_actor)
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
        output_format=output_format,
        series_modalities=series_modality,
        min_slices=min_slices,
        part=Part(part_id, num_parts),
        ray=ray_options,
        preview=preview,
        backend=backend,
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
    if report.skipped_inputs:
        console.print(
            f"{report.skipped_inputs} files or series of DICOM folder trees skipped "
            f"(reasons in {output / 'predict_report.json'})",
            highlight=False,
        )
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
    model: Annotated[
        str | None,
        typer.Option(
            help="With --track: the model that made the predictions (default: the one "
            "PRED_DIR/predict_report.json names); the run joins its training run's experiment."
        ),
    ] = None,
) -> None:
    """Score predictions against references: Dice, IoU, HD95, ASSD, surface Dice."""
    from medseg.pipelines.api import evaluate_folders
    from medseg.pipelines.evaluation.evaluate import track_evaluation

    result = evaluate_folders(
        pred_dir,
        ref_dir,
        output=output,
        layout=layout,
        labels=labels,
        tolerance_mm=tolerance,
        one_empty=one_empty,
        workers=workers,
    )
    _print_evaluation(result)
    if track:
        track_evaluation(result, model=model, predictions=pred_dir, references=ref_dir)
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
    from medseg.pipelines.pruning.prune import parse_levels
    from medseg.pipelines.pruning.prune import prune as run_pruning
    from medseg.pipelines.pruning.prune_report import pruning_table, track_pruning

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
        str, typer.Option("--format", "-f", help="torchscript, onnx or package.")
    ] = "torchscript",
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder for the exported files.")
    ] = Path("export"),
    prune_level: Annotated[
        int | None, typer.Option(min=1, max=4, help="UNet++: export head L only.")
    ] = None,
) -> None:
    """Write a file that runs without medseg (checked against medseg's own forward), or
    one NAME.medseg.zip that every medseg command takes as MODEL (--format package)."""
    if format_ == "package":
        from medseg.pipelines.package import write_package

        if prune_level is not None:
            raise typer.BadParameter(
                "a package holds a model directory; package the model `medseg prune` wrote",
                param_hint="--prune-level",
            )

        typer.echo(f"wrote {write_package(model, output)}")
        return
    if format_ not in ("torchscript", "onnx"):
        raise typer.BadParameter("use torchscript, onnx or package", param_hint="--format")
    from medseg.pipelines.export.export import ExportFormat, export_model

    result = export_model(model, cast(ExportFormat, format_), output, prune_level=prune_level)
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


report_app = typer.Typer(help="Work on the reports of split batches.", no_args_is_help=True)
app.add_typer(report_app, name="report")


@report_app.command("merge")
def report_merge(
    output: Annotated[Path, typer.Argument(help="The --output folder the parts wrote into.")],
) -> None:
    """Merge the parts' reports into predict_report.json; exit 1 if cases are missing or failed."""
    from medseg.pipelines.prediction.report_merge import merge_reports

    merged = merge_reports(output)
    console = _console()
    console.print(
        f"{len(merged.cases)} cases reported, {len(merged.failed)} failed, "
        f"{len(merged.missing)} missing -> {merged.path}",
        highlight=False,
    )
    if merged.missing_parts:
        parts = ", ".join(map(str, merged.missing_parts))
        console.print(f"[red]no report from part[/red] {parts}", highlight=False)
    for case_id in merged.missing:
        console.print(f"[red]missing[/red] {case_id}", highlight=False)
    for case in merged.failed:
        console.print(f"[red]failed[/red] {case.get('error')}", highlight=False)
    if merged.missing or merged.failed:
        raise typer.Exit(1)


def _print_evaluation(result: Any) -> None:
    from rich.table import Table

    from medseg.pipelines.evaluation.metrics import METRICS

    shown = [metric for metric in METRICS if metric.heading]
    table = Table(title="evaluation (mean over cases)")
    for column in ("label", "cases", *(metric.heading for metric in shown)):
        table.add_column(column, justify="left" if column == "label" else "right")
    for name, stats in result.summary["labels"].items():
        if not isinstance(stats, dict) or "dice" not in stats:
            continue
        cells = [stats[metric.name]["mean"] for metric in shown]
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
