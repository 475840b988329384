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
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg.datasets.base import Case
from medseg.errors import CaseError, ConfigError
from medseg.files import remove_stale_temporaries, require_outside, write_atomic, write_text_atomic
from medseg.pipelines.case_locks import CaseLock, lock_path, try_lock
from medseg.pipelines.cases import collect_cases
from medseg.pipelines.inference import resolve_device, resolve_precision
from medseg.pipelines.model_dir import open_model
from medseg.pipelines.segmenter import Segmentation, Segmenter
from medseg.pipelines.writers import KEPT_FORMATS, finished_output, output_name, write_label_like

logger = logging.getLogger(__name__)

REPORT = "predict_report.json"
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


@dataclass
class PredictReport:
    """Every case of a ``predict`` call (this rank's share), in input order."""

    model: str
    cases: list[CaseReport] = field(default_factory=list)

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
        raise ConfigError(f"{folder}: cannot write there ({error.strerror or error})") from None


def shard(cases: list[Case]) -> tuple[list[Case], int, int]:
    """This process's share of ``cases`` under ``torchrun`` (RANK, WORLD_SIZE), with both."""
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
    coarse_to_fine: bool | None = None,
) -> PredictReport:
    """Segment every case named by ``inputs`` into ``output_dir``; write the report.

    Outputs are ``<case_id>.nii.gz`` (``.mha``/``.nrrd`` for such inputs): uint8 label maps
    in the dataset's label values on the input's exact grid; with ``save_probabilities``
    also ``<case_id>_probabilities.npz`` (float16 ``(C, *spatial)``, channel names,
    affine). ``predict_report.json`` (``predict_report.rank<R>.json`` under torchrun) lists
    every case. ``coarse_to_fine`` (None: the model's ``inference.coarse_to_fine``) runs the
    full-resolution windows only around a coarse pass's foreground. Raises ``ConfigError``
    for an unusable model, input or output folder; per-case failures are in the report.
    """
    models = open_models(str(model))
    config = models[0][0]
    inputs_found = collect_cases(inputs, config.preprocessing.layout)
    cases, rank, world = shard(inputs_found.cases)
    output_dir = Path(output_dir)
    require_outside(output_dir, sorted(inputs_found.roots), "--output")
    if output_dir.resolve() in {folder.resolve() for folder in inputs_found.read_folders}:
        raise ConfigError(f"{output_dir}: is an input folder; choose another --output")
    require_writable(output_dir)
    target_device = resolve_device(device)
    segmenter = Segmenter(
        models,
        target_device,
        overlap=overlap,
        prune_level=prune_level,
        tta=tta,
        precision=resolve_precision(precision, target_device),
        skip_empty=skip_empty,
        apply_postprocessing=apply_postprocessing,
        coarse_to_fine=coarse_to_fine,
    )
    # The segmenter holds the networks it runs (on the CPU, channels-last copies); the loaded
    # ones need not stay in memory beside them.
    del models
    report = PredictReport(model=str(model))
    for problem in shard(inputs_found.problems)[0]:
        # A case the layout rejected (a missing channel, a path leaving the root) fails by
        # name, like a case that cannot be read.
        logger.error("%s", problem)
        report.cases.append(
            CaseReport(problem.case_id, "failed", error=f"{problem.path}: {problem.reason}")
        )
    todo = []
    for case in cases:
        target = output_dir / output_name(case.id, case.image[0])
        if not overwrite and _finished(case, target, save_probabilities):
            report.cases.append(CaseReport(case.id, "skipped", str(target)))
            _remove_stale_lock(target)
        else:
            todo.append((case, target))
    from medseg.pipelines.progress import task_progress

    held: list[CaseLock] = []
    with (
        task_progress("segmenting", len(todo), show_progress) as advance,
        ThreadPoolExecutor(1) as reader,
        ThreadPoolExecutor(1) as writer,
    ):
        claims = _claims(todo, overwrite, save_probabilities, report, advance)

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
                    job = writer.submit(_write, case, result, target, save_probabilities)
                except Exception as error:
                    _fail(entry, case, error)
                    lock.release()
                    job = None
                if writing is not None:
                    _finish(*writing)
                writing = (job, entry, lock) if job is not None else None
                entry.seconds = round(time.perf_counter() - started, 3)
                report.cases.append(entry)
                advance(case.id)
            if writing is not None:
                _finish(*writing)
        finally:
            for lock in held:
                lock.release()
    _settle_busy_cases(report, {case.id: case for case in cases})
    order = {case.id: index for index, case in enumerate(cases)}
    report.cases.sort(key=lambda entry: order.get(entry.case, -1))
    name = REPORT if world == 1 else f"predict_report.rank{rank}.json"
    payload = {
        "model": report.model,
        "rank": rank,
        "world_size": world,
        "cases": [asdict(c) for c in report.cases],
    }
    _write_report(output_dir / name, json.dumps(payload, indent=1))
    return report


def _claims(
    todo: list[tuple[Case, Path]],
    overwrite: bool,
    save_probabilities: bool,
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
            advance(case.id)
            continue
        if not overwrite and _finished(case, target, save_probabilities):
            lock.release()
            report.cases.append(CaseReport(case.id, "skipped", str(target)))
            advance(case.id)
            continue
        remove_stale_temporaries(target)
        remove_stale_temporaries(_probabilities_path(case, target))
        yield case, target, lock


def _write_report(path: Path, text: str) -> None:
    """Write the report atomically under its own lock, first removing the temporaries a
    killed run left: every writer of the report holds the lock, so none is live. Without
    the lock within a minute the report is still written, the cleanup left for later."""
    deadline = time.monotonic() + 60
    lock = try_lock(path)
    while lock is None and time.monotonic() < deadline:
        time.sleep(0.05)
        lock = try_lock(path)
    try:
        if lock is not None:
            remove_stale_temporaries(path)
        write_text_atomic(path, text)
    finally:
        if lock is not None:
            lock.release()


def _finished(case: Case, target: Path, save_probabilities: bool) -> bool:
    """Whether ``case`` needs no work: a complete label map and, when probabilities are
    asked for, a readable ``_probabilities.npz`` of the same grid (a run killed between
    the two writes leaves the label map alone)."""
    if not finished_output(target, case.image[0]):
        return False
    if not save_probabilities:
        return True
    try:
        with np.load(_probabilities_path(case, target), allow_pickle=False) as saved:
            shape = saved["probabilities"].shape
    except Exception:  # missing, truncated or foreign: make it again
        return False
    from medseg.datasets.headers import inspect_image

    return tuple(shape[1:]) == tuple(inspect_image(target).shape)


def _settle_busy_cases(report: PredictReport, cases: dict[str, Case]) -> None:
    """Bring the cases another run held up to date at the end, so the report of whichever
    run ends last is true: finished since (skipped, as any complete output), still held
    (left as busy), or given up without an output (failed: that run's failure or death)."""
    for entry in report.cases:
        if entry.status != "skipped" or entry.error != BUSY or entry.output is None:
            continue
        target, case = Path(entry.output), cases[entry.case]
        if finished_output(target, case.image[0]):
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
        job.result()
    except Exception as error:  # a write failure (full disk, permissions) fails its case only
        entry.status, entry.output = "failed", None
        entry.error = f"{entry.case}: cannot write output ({error})"
        logger.error("%s", entry.error)
    finally:
        lock.release()


def _write(case: Case, result: Segmentation, target: Path, save_probabilities: bool) -> None:
    reference = case.image[0]
    kept = (".nii", ".nii.gz", *KEPT_FORMATS)
    if reference.is_dir() or not reference.name.lower().endswith(kept):
        import nibabel as nib

        image = nib.Nifti1Image(result.labels, result.affine)
        image.set_qform(result.affine, code=1)
        image.set_sform(result.affine, code=1)
        write_atomic(target, lambda path: nib.save(image, path))
    else:
        write_label_like(reference, result.labels, target)
    if save_probabilities and result.probabilities is not None:
        path = _probabilities_path(case, target)
        write_atomic(
            path,
            lambda temporary: np.savez_compressed(
                temporary, probabilities=result.probabilities, affine=result.affine
            ),
        )
