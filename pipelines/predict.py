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
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg.datasets.base import Case
from medseg.errors import CaseError, ConfigError
from medseg.files import write_atomic, write_text_atomic
from medseg.pipelines.cases import collect_cases
from medseg.pipelines.inference import resolve_device, resolve_precision
from medseg.pipelines.model_dir import open_model
from medseg.pipelines.segmenter import Segmentation, Segmenter
from medseg.pipelines.writers import output_name, write_label_like

logger = logging.getLogger(__name__)

REPORT = "predict_report.json"


@dataclass
class CaseReport:
    """How one case went: ``status`` is ``done``, ``skipped`` (output existed) or ``failed``."""

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
) -> PredictReport:
    """Segment every case named by ``inputs`` into ``output_dir``; write the report.

    Outputs are ``<case_id>.nii.gz`` (``.mha``/``.nrrd`` for such inputs): uint8 label maps
    in the dataset's label values on the input's exact grid; with ``save_probabilities``
    also ``<case_id>_probabilities.npz`` (float16 ``(C, *spatial)``, channel names,
    affine). ``predict_report.json`` (``predict_report.rank<R>.json`` under torchrun) lists
    every case. Raises ``ConfigError`` for an unusable model, input or output folder;
    per-case failures are in the report.
    """
    models = open_models(str(model))
    config = models[0][0]
    cases, rank, world = shard(collect_cases(inputs, config.preprocessing.layout))
    output_dir = Path(output_dir)
    input_folders = {
        (c.image[0] if c.image[0].is_dir() else c.image[0].parent).resolve() for c in cases
    }
    if output_dir.resolve() in input_folders:
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
    )
    # The segmenter holds the networks it runs (on the CPU, channels-last copies); the loaded
    # ones need not stay in memory beside them.
    del models
    report = PredictReport(model=str(model))
    todo = []
    for case in cases:
        target = output_dir / output_name(case.id, case.image[0])
        for stale in output_dir.glob(f".{target.name}.*"):
            stale.unlink()  # a temporary file left by a run killed mid-write
        if target.exists() and not overwrite:
            report.cases.append(CaseReport(case.id, "skipped", str(target)))
        else:
            todo.append((case, target))
    from medseg.pipelines.progress import task_progress

    with (
        task_progress("segmenting", len(todo), show_progress) as advance,
        ThreadPoolExecutor(1) as reader,
        ThreadPoolExecutor(1) as writer,
    ):
        loading = reader.submit(segmenter.load, todo[0][0]) if todo else None
        writing: tuple[Future, CaseReport] | None = None
        for index, (case, target) in enumerate(todo):
            started = time.perf_counter()
            current, loading = loading, None
            if index + 1 < len(todo):
                loading = reader.submit(segmenter.load, todo[index + 1][0])
            entry = CaseReport(case.id, "failed")
            try:
                result = segmenter.infer(current.result(), keep_probabilities=save_probabilities)
                entry = CaseReport(
                    case.id, "done", str(target), 0.0, result.windows, result.skipped
                )
                job = writer.submit(_write, case, result, target, save_probabilities)
            except Exception as error:
                _fail(entry, case, error)
                job = None
            if writing is not None:
                _finish(*writing)
            writing = (job, entry) if job is not None else None
            entry.seconds = round(time.perf_counter() - started, 3)
            report.cases.append(entry)
            advance(case.id)
        if writing is not None:
            _finish(*writing)
    name = REPORT if world == 1 else f"predict_report.rank{rank}.json"
    payload = {
        "model": report.model,
        "rank": rank,
        "world_size": world,
        "cases": [asdict(c) for c in report.cases],
    }
    write_text_atomic(output_dir / name, json.dumps(payload, indent=1))
    return report


def _fail(entry: CaseReport, case: Case, error: BaseException) -> None:
    message = (
        str(error)
        if isinstance(error, CaseError)
        else f"{case.image[0]}: {type(error).__name__}: {error}"
    )
    logger.error("%s", message)
    entry.status, entry.output, entry.error = "failed", None, message


def _finish(job: Future, entry: CaseReport) -> None:
    try:
        job.result()
    except Exception as error:  # a write failure (full disk, permissions) fails its case only
        entry.status, entry.output = "failed", None
        entry.error = f"{entry.case}: cannot write output ({error})"
        logger.error("%s", entry.error)


def _write(case: Case, result: Segmentation, target: Path, save_probabilities: bool) -> None:
    reference = case.image[0]
    if reference.is_dir() or not reference.name.endswith((".nii", ".nii.gz", ".mha", ".nrrd")):
        import nibabel as nib

        image = nib.Nifti1Image(result.labels, result.affine)
        image.set_qform(result.affine, code=1)
        image.set_sform(result.affine, code=1)
        write_atomic(target, lambda path: nib.save(image, path))
    else:
        write_label_like(reference, result.labels, target)
    if save_probabilities and result.probabilities is not None:
        path = target.with_name(f"{case.id}_probabilities.npz")
        write_atomic(
            path,
            lambda temporary: np.savez_compressed(
                temporary, probabilities=result.probabilities, affine=result.affine
            ),
        )
