"""``medseg predict``: segment a batch of cases onto each input's own grid, crash-safely.

Each case is preprocessed as in training, segmented with sliding-window inference, taken
back to the input's grid with MONAI's ``Invertd`` and written atomically. The next case is
read and the previous one written while the current one runs. A case whose output exists
is skipped (unless ``overwrite``), so a rerun after a crash finishes the rest; a failing
case is reported and the batch goes on. Under ``torchrun`` each rank takes every
WORLD_SIZE-th case.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from medseg.datasets.base import Case, CaseProblem
from medseg.datasets.dicom_tree import report_skipped_inputs, series_rules
from medseg.datasets.image_io import KEPT_FORMATS, NIFTI_FILE_SUFFIXES, write_label_like
from medseg.errors import CaseError, ConfigError
from medseg.files import remove_stale_temporaries, require_outside, write_atomic, write_text_atomic
from medseg.pipelines.case_locks import CaseLock, lock_path, try_lock
from medseg.pipelines.inference import resolve_device, resolve_precision
from medseg.pipelines.label_table import label_table, table_as_data
from medseg.pipelines.model_dir import open_model
from medseg.pipelines.prediction.cases import collect_cases
from medseg.pipelines.prediction.clinical_outputs import CaseDescriber, merged_rows
from medseg.pipelines.prediction.dicom_seg import seg_path, write_dicom_seg
from medseg.pipelines.prediction.label_files import write_label_files
from medseg.pipelines.prediction.output_formats import (
    OutputPlan,
    plan_outputs,
    require_output_format,
    seg_finished,
)
from medseg.pipelines.prediction.parts import Part
from medseg.pipelines.prediction.segmenter import Segmentation, Segmenter
from medseg.pipelines.prediction.writers import finished_output, output_name
from medseg.pipelines.statistics import statistics_csv

if TYPE_CHECKING:
    from medseg.pipelines.prediction.ray_predict import RayOptions

Shared = TypeVar("Shared")

logger = logging.getLogger(__name__)

BUSY = "another medseg predict run is segmenting this case"
ABANDONED = "another medseg predict run claimed this case and did not finish it; run again"


@dataclass
class CaseReport:
    """How one case went: ``status`` is ``done``, ``skipped`` (a complete output existed, or
    another run is segmenting the case: ``error`` then says so) or ``failed``."""

    case: str
    status: str
    output: str | None = None
    seconds: float = 0.0
    windows: int = 0
    skipped_windows: int = 0
    error: str | None = None
    dicom_seg: str | None = None
    statistics: list[dict[str, Any]] | None = None


@dataclass
class PredictReport:
    """Every case of a ``predict`` call (this rank's share), in input order, and how many
    files or series of DICOM folder trees were left out (``skipped_inputs``)."""

    model: str
    cases: list[CaseReport] = field(default_factory=list)
    skipped_inputs: int = 0

    @property
    def failed(self) -> int:
        """Number of cases that could not be segmented."""
        return sum(case.status == "failed" for case in self.cases)


def open_models(spec: str) -> list[tuple[Any, Any]]:
    """The models named by ``spec``: one model, a comma-separated list (an ensemble), or a
    cross-validation folder whose ``fold_*/model`` directories are all ensembled."""
    parts = [part.strip() for part in spec.split(",") if part.strip()]
    if len(parts) == 1 and Path(parts[0]).is_dir():
        folds = sorted(Path(parts[0]).glob("fold_*/model"))
        if folds and not (Path(parts[0]) / "config.yaml").exists():
            parts = [str(fold) for fold in folds]
    return [open_model(part) for part in parts]


def require_writable(folder: Path) -> None:
    """Create ``folder`` if needed and prove a file can be written there (``ConfigError``)."""
    import tempfile

    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".medseg-probe-"):
            pass
    except OSError as error:
        raise ConfigError(f"{folder}: cannot write there ({error.strerror or error})") from error


def shard(cases: list[Shared]) -> tuple[list[Shared], int, int]:
    """This process's share of ``cases`` (or of any list) under ``torchrun`` (RANK,
    WORLD_SIZE), with both."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    return cases[rank::world], rank, world


def predict(
    model: str | Path,
    inputs: list[str],
    output_dir: Path,
    *,
    overlap: float | None = None,
    prune_level: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    tta: bool = False,
    skip_empty: bool = True,
    apply_postprocessing: bool = True,
    save_probabilities: bool = False,
    overwrite: bool = False,
    show_progress: bool = True,
    output_format: str | None = None,
    series_modalities: list[str] | None = None,
    min_slices: int = 5,
    part: Part | None = None,
    ray: RayOptions | None = None,
    preview: bool = False,
    backend: str = "auto",
    coarse_to_fine: bool | None = None,
) -> PredictReport:
    """Segment every case named by ``inputs`` into ``output_dir``; write the report.

    Outputs are ``<case_id>.nii.gz`` (``.mha``/``.nrrd`` for such inputs): uint8 label maps
    in the dataset's label values on the input's exact grid, the values' abbreviated names
    in a NIfTI's description; ``labels.itksnap.txt`` and ``labels.ctbl`` name them for
    ITK-SNAP and 3D Slicer (see ``label_files``); with ``save_probabilities``
    also ``<case_id>_probabilities.npz`` (float16 ``(C, *spatial)``, channel names,
    affine); for DICOM series ``<case_id>.seg.dcm`` (``output_format``: see
    ``output_formats``). ``predict_report.json`` (``predict_report.rank<R>.json`` under
    torchrun) lists every case, the model's label table and what DICOM folder trees left out
    (``series_modalities`` and ``min_slices`` select their series: see ``series_rules``),
    with each segmented case's statistics, which ``statistics.csv``
    (``statistics.rank<R>.csv``) also holds; ``preview`` draws ``previews/<case_id>.png``
    (``clinical_outputs``). ``part`` takes one part of the sorted case list (its report is
    ``predict_report.part-I-of-N.json``, see ``parts``); ``ray`` segments on a Ray cluster
    instead of in this process (see ``ray_predict``). ``backend`` runs the windows on torch,
    ONNX Runtime or OpenVINO (``auto``: the fastest that agrees with torch, see
    ``backends``). ``coarse_to_fine`` (None: the model's ``inference.coarse_to_fine``) runs
    the full-resolution windows only around a coarse pass's foreground. Raises
    ``ConfigError`` for an unusable
    model, input, output folder or backend; per-case failures are in the report.
    """
    require_output_format(output_format)
    if ray is not None:
        model, inputs, output_dir = ray.reachable_paths(model, inputs, output_dir)
    models = open_models(str(model))
    config = models[0][0]
    rules = series_rules(config.preprocessing.modality, series_modalities, min_slices)
    inputs_found = collect_cases(inputs, config.preprocessing.layout, rules)
    report_skipped_inputs(inputs_found.skipped)
    part = part or Part()
    cohort = [case.id for case in inputs_found.cases]
    cohort += [problem.case_id for problem in inputs_found.problems]
    owned = part.owns(cohort)
    cases, rank, world = shard([case for case in inputs_found.cases if case.id in owned])
    problems = shard([problem for problem in inputs_found.problems if problem.case_id in owned])[0]
    output_dir = Path(output_dir)
    require_outside(output_dir, sorted(inputs_found.roots), "--output")
    if output_dir.resolve() in {folder.resolve() for folder in inputs_found.read_folders}:
        raise ConfigError(f"{output_dir}: is an input folder; choose another --output")
    require_writable(output_dir)
    table = label_table(config)
    outputs = plan_outputs(output_format, table, config, cases)
    write_label_files(output_dir, table)
    describer = CaseDescriber.for_model(config, output_dir, preview)
    spatial_dims = config.preprocessing.spatial_dims
    names = (part.report_name(rank, world), part.report_name(rank, world, "statistics", ".csv"))
    fields: dict[str, Any] = {"rank": rank, "world_size": world, "part_id": part.part_id}
    fields |= {"num_parts": part.num_parts, "cohort": sorted(cohort)}
    fields |= {
        "label_table": table_as_data(table),
        "skipped_inputs": [
            {"path": str(item.path), "reason": item.reason} for item in inputs_found.skipped
        ],
    }
    skipped_inputs = len(inputs_found.skipped)
    if ray is not None:
        from medseg.pipelines.prediction.ray_predict import predict_on_ray

        del models
        settings: dict[str, Any] = {
            "overlap": overlap,
            "prune_level": prune_level,
            "device": device,
        }
        settings |= {"precision": precision, "tta": tta, "skip_empty": skip_empty}
        settings |= {"apply_postprocessing": apply_postprocessing, "outputs": outputs}
        settings |= {"describer": describer, "backend": backend}
        settings |= {"coarse_to_fine": coarse_to_fine}
        settings |= {"save_probabilities": save_probabilities, "overwrite": overwrite}
        report = start_report(str(model), problems, skipped_inputs)
        todo = pending_cases(
            cases, output_dir, spatial_dims, overwrite, save_probabilities, outputs, report
        )
        report.cases += predict_on_ray(ray, str(model), todo, settings, show_progress)
        save_report(report, cases, outputs, describer, output_dir, names, fields)
        return report
    target_device = resolve_device(device)
    segmenter = Segmenter(
        models,
        target_device,
        overlap=overlap,
        prune_level=prune_level,
        tta=tta,
        precision=resolve_precision(
            precision, target_device, [config for config, _ in models], backend
        ),
        skip_empty=skip_empty,
        apply_postprocessing=apply_postprocessing,
        backend=backend,
        coarse_to_fine=coarse_to_fine,
    )
    # The segmenter holds the networks it runs (on the CPU, channels-last copies); the loaded
    # ones need not stay in memory beside them.
    del models
    report = start_report(str(model), problems, skipped_inputs)
    todo = pending_cases(
        cases, output_dir, spatial_dims, overwrite, save_probabilities, outputs, report
    )
    from medseg.pipelines.progress import task_progress

    held: list[CaseLock] = []
    with (
        task_progress("segmenting", len(todo), show_progress) as advance,
        ThreadPoolExecutor(1) as reader,
        ThreadPoolExecutor(1) as writer,
    ):
        claims = _claims(todo, overwrite, save_probabilities, outputs, report, advance)

        def load_next() -> tuple[tuple[Case, Path, CaseLock], Future] | None:
            claim = next(claims, None)
            if claim is None:
                return None
            held.append(claim[2])
            return claim, reader.submit(segmenter.load, claim[0])

        try:
            upcoming = load_next()
            writing: tuple[Future, CaseReport, CaseLock] | None = None
            while upcoming is not None:
                (case, target, lock), current = upcoming
                started = time.perf_counter()
                upcoming = load_next()
                entry = CaseReport(case.id, "failed")
                try:
                    result = segmenter.infer(
                        current.result(), keep_probabilities=save_probabilities
                    )
                    entry = CaseReport(
                        case.id, "done", str(target), 0.0, result.windows, result.skipped
                    )
                    _name_outputs(entry, case, target, outputs)
                    job = writer.submit(
                        _write, case, result, target, save_probabilities, outputs, describer
                    )
                except Exception as error:
                    _fail(entry, case, error)
                    lock.release()
                    job = None
                if writing is not None:
                    _finish(*writing)
                writing = (job, entry, lock) if job is not None else None
                entry.seconds = round(time.perf_counter() - started, 3)
                report.cases.append(entry)
                advance(f"{case.id} {entry.status}")
            if writing is not None:
                _finish(*writing)
        finally:
            for lock in held:
                lock.release()
    save_report(report, cases, outputs, describer, output_dir, names, fields)
    return report


def start_report(model: str, problems: list[CaseProblem], skipped_inputs: int) -> PredictReport:
    """A new report of ``model`` in which every case a layout rejected (a missing channel,
    a path leaving the root) has failed by name, like a case that cannot be read;
    ``skipped_inputs`` counts the inputs discovery left out."""
    report = PredictReport(model=model, skipped_inputs=skipped_inputs)
    for problem in problems:
        logger.error("%s", problem)
        report.cases.append(
            CaseReport(problem.case_id, "failed", error=f"{problem.path}: {problem.reason}")
        )
    return report


def pending_cases(
    cases: list[Case],
    output_dir: Path,
    spatial_dims: int,
    overwrite: bool,
    save_probabilities: bool,
    outputs: OutputPlan,
    report: PredictReport,
) -> list[tuple[Case, Path]]:
    """The ``(case, output path)`` pairs still to segment; each case with complete outputs
    (unless ``overwrite``) is reported as skipped instead, and one whose asked-for outputs
    cannot be made (a DICOM SEG of a non-DICOM input) as failed. ``spatial_dims`` is the
    model's (2: pictures give PNG masks)."""
    todo = []
    for case in cases:
        target = output_dir / output_name(case.id, case.image[0], spatial_dims)
        try:
            outputs.for_case(case)
        except CaseError as error:
            _fail(entry := CaseReport(case.id, "failed"), case, error)
            report.cases.append(entry)
            continue
        if not overwrite and _finished(case, target, save_probabilities, outputs):
            report.cases.append(entry := CaseReport(case.id, "skipped"))
            _name_outputs(entry, case, target, outputs)
            _remove_stale_lock(target)
        else:
            todo.append((case, target))
    return todo


def save_report(
    report: PredictReport,
    cases: list[Case],
    outputs: OutputPlan,
    describer: CaseDescriber,
    output_dir: Path,
    names: tuple[str, str],
    fields: dict[str, Any],
) -> None:
    """Settle the cases other runs held, describe the finished cases an earlier run left
    without statistics or preview, put the entries in input order and write the report
    and the statistics file (``names``: their names in ``output_dir``), the report with
    ``fields`` (rank, part, the whole cohort, the label table, the inputs left out)."""
    by_id = {case.id: case for case in cases}
    _settle_busy_cases(report, by_id, outputs)
    statistics = output_dir / names[1]
    describer.catch_up(report.cases, by_id, statistics)
    order = {case.id: index for index, case in enumerate(cases)}
    report.cases.sort(key=lambda entry: order.get(entry.case, -1))
    payload = {"model": report.model, **fields, "cases": [asdict(c) for c in report.cases]}
    _write_report(output_dir / names[0], json.dumps(payload, indent=1))
    fresh = {c.case: c.statistics for c in report.cases if c.statistics is not None}
    _write_report(statistics, lambda: statistics_csv(merged_rows(statistics, fresh)))


def _claims(
    todo: list[tuple[Case, Path]],
    overwrite: bool,
    save_probabilities: bool,
    outputs: OutputPlan,
    report: PredictReport,
    advance: Any,
) -> Iterator[tuple[Case, Path, CaseLock]]:
    """The cases of ``todo`` this process claims, in order, each with its lock. A case
    another live run holds, or that one finished since the run started, is reported as
    skipped; stale temporaries of a claimed case (a killed writer's) are removed."""
    for case, target in todo:
        lock = try_lock(target)
        if lock is None:
            report.cases.append(CaseReport(case.id, "skipped", str(target), error=BUSY))
            advance(f"{case.id} skipped")
            continue
        if not overwrite and _finished(case, target, save_probabilities, outputs):
            lock.release()
            report.cases.append(entry := CaseReport(case.id, "skipped"))
            _name_outputs(entry, case, target, outputs)
            advance(f"{case.id} skipped")
            continue
        remove_stale_temporaries(target)
        remove_stale_temporaries(_probabilities_path(case, target))
        yield case, target, lock


def _write_report(path: Path, text: str | Callable[[], str]) -> None:
    """Write the report atomically under its own lock, first removing the temporaries a
    killed run left: every writer of the report holds the lock, so none is live. Without
    the lock within a minute the report is still written, the cleanup left for later.
    ``text`` may be a function, called under the lock (to merge with what is there)."""
    deadline = time.monotonic() + 60
    lock = try_lock(path)
    while lock is None and time.monotonic() < deadline:
        time.sleep(0.05)
        lock = try_lock(path)
    try:
        if lock is not None:
            remove_stale_temporaries(path)
        write_text_atomic(path, text() if callable(text) else text)
    finally:
        if lock is not None:
            lock.release()


def _finished(case: Case, target: Path, save_probabilities: bool, outputs: OutputPlan) -> bool:
    """Whether ``case`` needs no work: a complete label map and DICOM SEG (those of them
    ``outputs`` asks for) and, when probabilities are asked for, a readable
    ``_probabilities.npz`` of the same grid (a run killed between the writes leaves the
    label map alone)."""
    label_map, dicom_seg = outputs.for_case(case)
    if label_map and not finished_output(target, case.image[0]):
        return False
    if dicom_seg and not seg_finished(seg_path(target.parent, case.id)):
        return False
    if not save_probabilities:
        return True
    try:
        with np.load(_probabilities_path(case, target), allow_pickle=False) as saved:
            shape = saved["probabilities"].shape
    except Exception:  # missing, truncated or foreign: make it again
        return False
    from medseg.datasets.image_io import read_header

    grid = target if label_map else case.image[0]
    return tuple(shape[1:]) == tuple(read_header(grid).shape)


def _settle_busy_cases(report: PredictReport, cases: dict[str, Case], outputs: OutputPlan) -> None:
    """Bring the cases another run held up to date at the end, so the report of whichever
    run ends last is true: finished since (skipped, as any complete output), still held
    (left as busy), or given up without an output (failed: that run's failure or death)."""
    for entry in report.cases:
        if entry.status != "skipped" or entry.error != BUSY or entry.output is None:
            continue
        target, case = Path(entry.output), cases[entry.case]
        if _finished(case, target, False, outputs):
            entry.error = None
            continue
        lock = try_lock(target)
        if lock is not None:
            lock.release()
            entry.status, entry.output = "failed", None
            entry.error = f"{case.image[0]}: {ABANDONED}"
            logger.error("%s", entry.error)


def _remove_stale_lock(target: Path) -> None:
    # A run killed between renaming an output into place and releasing its lock leaves
    # the lock file; it is removed once no live process holds it.
    if lock_path(target).exists():
        lock = try_lock(target)
        if lock is not None:
            lock.release()


def _probabilities_path(case: Case, target: Path) -> Path:
    return target.with_name(f"{case.id}_probabilities.npz")


def _fail(entry: CaseReport, case: Case, error: BaseException) -> None:
    message = (
        str(error)
        if isinstance(error, CaseError)
        else f"{case.image[0]}: {type(error).__name__}: {error}"
    )
    logger.error("%s", message)
    entry.status, entry.output, entry.error = "failed", None, message


def _finish(job: Future, entry: CaseReport, lock: CaseLock) -> None:
    try:
        entry.statistics = job.result()
    except Exception as error:  # a write failure (full disk, permissions) fails its case only
        entry.status, entry.output, entry.dicom_seg = "failed", None, None
        entry.error = f"{entry.case}: cannot write output ({error})"
        logger.error("%s", entry.error)
    finally:
        lock.release()


def _name_outputs(entry: CaseReport, case: Case, target: Path, outputs: OutputPlan) -> None:
    label_map, dicom_seg = outputs.for_case(case)
    entry.output = str(target) if label_map else None
    entry.dicom_seg = str(seg_path(target.parent, case.id)) if dicom_seg else None


def _write(
    case: Case,
    result: Segmentation,
    target: Path,
    save_probabilities: bool,
    outputs: OutputPlan,
    describer: CaseDescriber,
) -> list[dict[str, Any]]:
    """Write the case's outputs; return its statistics rows."""
    reference = case.image[0]
    kept = (*NIFTI_FILE_SUFFIXES, *KEPT_FORMATS)
    label_map, dicom_seg = outputs.for_case(case)
    if dicom_seg:
        write_dicom_seg(
            reference,
            result.labels,
            result.affine,
            outputs.table,
            seg_path(target.parent, case.id),
            algorithm=outputs.algorithm,
        )
    foreign = reference.is_dir() or not reference.name.lower().endswith(kept)
    if label_map and not target.name.endswith(".png") and foreign:
        import nibabel as nib

        image = nib.Nifti1Image(result.labels, result.affine)
        image.set_qform(result.affine, code=1)
        image.set_sform(result.affine, code=1)
        image.header["descrip"] = outputs.description
        write_atomic(target, lambda path: nib.save(image, path))
    elif label_map:
        write_label_like(reference, result.labels, target, description=outputs.description)
    probabilities = result.probabilities
    if save_probabilities and probabilities is not None:
        path = _probabilities_path(case, target)
        write_atomic(
            path,
            lambda temporary: np.savez_compressed(
                temporary, probabilities=probabilities, affine=result.affine
            ),
        )
    return describer.describe(case, result.labels, result.affine)
