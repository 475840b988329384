"""``medseg predict``: segment a batch of cases onto each input's own grid, crash-safely.

Each case is preprocessed as in training, segmented with sliding-window inference, taken
back to the input's grid with MONAI's ``Invertd`` and written atomically. A case whose
output exists is skipped (unless ``overwrite``), so a rerun after a crash finishes the
rest; a failing case is reported and the batch goes on.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from medseg.datasets.base import Case
from medseg.errors import CaseError, ConfigError
from medseg.files import write_text_atomic
from medseg.pipelines.cases import collect_cases
from medseg.pipelines.inference import resolve_device, sliding_window_predict
from medseg.pipelines.model_dir import ModelConfig, open_model
from medseg.pipelines.writers import output_name, write_label_like
from medseg.transforms.labels import paint_labels, probabilities
from medseg.transforms.presets import inference_transforms

logger = logging.getLogger(__name__)

REPORT = "predict_report.json"


@dataclass
class CaseReport:
    """How one case went: ``status`` is ``done``, ``skipped`` (output existed) or ``failed``."""

    case: str
    status: str
    output: str | None = None
    seconds: float = 0.0
    error: str | None = None


@dataclass
class PredictReport:
    """Every case of a ``predict`` call, in input order; ``failed`` counts the failures."""

    model: str
    cases: list[CaseReport] = field(default_factory=list)

    @property
    def failed(self) -> int:
        """Number of cases that could not be segmented."""
        return sum(case.status == "failed" for case in self.cases)


def case_error(error: BaseException, path: Path) -> CaseError:
    """The ``CaseError`` behind ``error`` (MONAI's ``Compose`` wraps what a transform raises
    in ``RuntimeError``s), or a new one naming ``path`` with the innermost message."""
    innermost = error
    while True:
        if isinstance(innermost, CaseError):
            return innermost
        if innermost.__cause__ is None and innermost.__context__ is None:
            break
        innermost = innermost.__cause__ or innermost.__context__
    reason = str(innermost).strip().splitlines()[-1] if str(innermost).strip() else ""
    return CaseError(f"{path}: cannot read ({reason or type(innermost).__name__})")


class Segmenter:
    """A loaded model that segments one case at a time.

    Args:
        config: the model directory's config.
        network: the network, any device.
        device: where windows run.
        overlap: sliding-window overlap (None: the model's).
        prune_level: UNet++ head to use (None: the model's own).
    """

    def __init__(
        self,
        config: ModelConfig,
        network: torch.nn.Module,
        device: torch.device,
        *,
        overlap: float | None = None,
        prune_level: int | None = None,
    ) -> None:
        from monai.transforms import Invertd

        self.config = config
        self.scheme = config.scheme
        self.network = network.to(device).eval()
        self.device = device
        self.overlap = config.inference.overlap if overlap is None else overlap
        self.forward_options = {} if prune_level is None else {"prune_level": prune_level}
        self.transform = inference_transforms(config.preprocessing)
        self.invert = Invertd("pred", self.transform, orig_keys="image", nearest_interp=False)

    def segment(self, case: Case) -> Any:
        """Label map (uint8 numpy, the input file's spatial shape and index order) of ``case``.

        Raises ``CaseError`` naming the file when it cannot be read or has the wrong channels.
        """
        from monai.data import MetaTensor

        source = [str(p) for p in case.image] if len(case.image) > 1 else str(case.image[0])
        try:
            data = self.transform({"image": source})
        except Exception as error:
            raise case_error(error, case.image[0]) from None
        image = data["image"]
        expected = self.config.network.in_channels
        if image.shape[0] != expected:
            raise CaseError(
                f"{case.image[0]}: has {image.shape[0]} channel(s), the model takes {expected} "
                f"({', '.join(self.config.preprocessing.channels)})"
            )
        logits = sliding_window_predict(
            self.network,
            image[None],
            roi_size=self.config.inference.roi_size,
            overlap=self.overlap,
            sw_batch_size=self.config.inference.sw_batch_size,
            mode=self.config.inference.mode,
            device=self.device,
            **self.forward_options,
        )
        data["pred"] = MetaTensor(probabilities(logits, self.scheme)[0])
        inverted = self.invert(data)["pred"]
        return paint_labels(inverted, self.scheme)


def predict(
    model: str | Path,
    inputs: list[str],
    output_dir: Path,
    *,
    overlap: float | None = None,
    prune_level: int | None = None,
    device: str = "auto",
    overwrite: bool = False,
    show_progress: bool = True,
) -> PredictReport:
    """Segment every case named by ``inputs`` into ``output_dir`` and write ``predict_report.json``.

    Outputs are ``<case_id>.nii.gz`` (``.mha``/``.nrrd`` for such inputs): uint8 label maps
    in the dataset's label values on the input's exact grid. Raises ``ConfigError`` for an
    unusable model, input or output folder; per-case failures are in the report.
    """
    config, network = open_model(model)
    cases = collect_cases(inputs, config.preprocessing.layout)
    output_dir = Path(output_dir)
    input_folders = {c.image[0].parent.resolve() for c in cases}
    if output_dir.resolve() in input_folders:
        raise ConfigError(f"{output_dir}: is an input folder; choose another --output")
    output_dir.mkdir(parents=True, exist_ok=True)
    segmenter = Segmenter(
        config, network, resolve_device(device), overlap=overlap, prune_level=prune_level
    )
    report = PredictReport(model=str(model))
    with _case_progress(len(cases), show_progress) as advance:
        for case in cases:
            report.cases.append(_predict_case(segmenter, case, output_dir, overwrite))
            advance(case.id)
    write_text_atomic(
        output_dir / REPORT,
        json.dumps({"model": report.model, "cases": [asdict(c) for c in report.cases]}, indent=1),
    )
    return report


def _predict_case(
    segmenter: Segmenter, case: Case, output_dir: Path, overwrite: bool
) -> CaseReport:
    target = output_dir / output_name(case.id, case.image[0])
    if target.exists() and not overwrite:
        return CaseReport(case.id, "skipped", str(target))
    started = time.perf_counter()
    try:
        labels = segmenter.segment(case)
        write_label_like(case.image[0], labels, target)
    except CaseError as error:
        logger.error("%s", error)
        return CaseReport(case.id, "failed", error=str(error))
    except Exception as error:  # one broken case must not stop the batch
        message = f"{case.image[0]}: {type(error).__name__}: {error}"
        logger.error("%s", message)
        return CaseReport(case.id, "failed", error=message)
    return CaseReport(case.id, "done", str(target), round(time.perf_counter() - started, 3))


def _case_progress(total: int, show: bool) -> Any:
    from medseg.pipelines.progress import task_progress

    return task_progress("segmenting", total, show)
