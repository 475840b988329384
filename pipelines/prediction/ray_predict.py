"""``medseg predict --ray``: the same batch, segmented by Ray actors across a cluster.

Ray is only the dispatcher. Each actor loads the model once and runs ``medseg predict``'s
own per-case steps (claim the case's lock, skip it when finished, read, segment, write
atomically), so every guarantee of a plain run holds: outputs appear whole or not at all,
finished cases are skipped on a rerun, a failing case is reported and the rest are done,
and one report is written by the driver. An actor that dies (killed, out of memory, its
node lost) is restarted by Ray and its case is redone from the start: the kernel freed the
dead process's lock and the new claim removes its half-written temporaries.

Every worker reads the inputs and writes the outputs itself, so their paths must name the
same files on every node (a shared file system mounted at the same path).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medseg.datasets.base import Case
from medseg.errors import ConfigError

logger = logging.getLogger(__name__)

LOCAL = "local"
URI_PREFIXES = ("runs:/", "models:/")


@dataclass(frozen=True)
class RayOptions:
    """Where and how to run on Ray.

    ``address``: ``local`` (start a Ray runtime in this process, stopped at the end),
    ``auto`` (join the cluster this machine belongs to) or a cluster address
    (``HOST:PORT`` or ``ray://HOST:PORT``). ``actors``: how many models segment at once;
    ``cpus_per_actor`` / ``gpus_per_actor``: what each actor reserves (fractions allowed);
    ``max_restarts``: how often a dead actor is restarted and its case retried.
    """

    address: str = LOCAL
    actors: int = 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    max_restarts: int = 3

    def __post_init__(self) -> None:
        if self.actors < 1:
            raise ConfigError(f"--ray-actors {self.actors}: must be 1 or more")
        if self.cpus_per_actor < 0 or self.gpus_per_actor < 0:
            raise ConfigError("--ray-cpus-per-actor and --ray-gpus-per-actor must not be negative")

    @property
    def joins_cluster(self) -> bool:
        """Whether the workers may run on other machines than this one."""
        return self.address != LOCAL

    def reachable_paths(
        self, model: str | Path, inputs: list[str], output_dir: Path
    ) -> tuple[str, list[str], Path]:
        """``model``, ``inputs`` and ``output_dir`` as every worker must see them: absolute.

        With a local runtime a relative path is made absolute from this process's working
        folder. On a cluster it is refused (``ConfigError``): another node has another
        working folder, and would read or write other files under the same name.
        """
        models = [self._absolute(part.strip(), "MODEL") for part in str(model).split(",")]
        return (
            ",".join(models),
            [self._absolute(text, "INPUT") for text in inputs],
            Path(self._absolute(str(output_dir), "--output")),
        )

    def _absolute(self, text: str, role: str) -> str:
        if text.startswith(URI_PREFIXES) or Path(text).is_absolute():
            return text
        if self.joins_cluster:
            raise ConfigError(
                f"{text}: {role} is a relative path, which names other files on each Ray "
                "node; give an absolute path on storage every node mounts at the same place"
            )
        return str(Path.cwd() / text)


class CaseWorker:
    """A Ray actor's state: the loaded model(s) and ``medseg predict``'s settings.

    ``model`` is a model spec as ``predict`` takes it; ``settings`` holds ``predict``'s
    keyword arguments (overlap, prune_level, device, precision, tta, skip_empty,
    apply_postprocessing, save_probabilities, overwrite, backend, coarse_to_fine),
    ``outputs`` (the run's ``OutputPlan``) and ``describer`` (its ``CaseDescriber``).
    """

    def __init__(self, model: str, settings: dict[str, Any]) -> None:
        from medseg.pipelines.inference import resolve_device, resolve_precision
        from medseg.pipelines.prediction.predict import open_models
        from medseg.pipelines.prediction.segmenter import Segmenter

        self.settings = settings
        self.device = resolve_device(settings["device"])
        models = open_models(model)
        precision = resolve_precision(
            settings["precision"],
            self.device,
            [config for config, _ in models],
            settings["backend"],
        )
        self.segmenter = Segmenter(
            models,
            self.device,
            overlap=settings["overlap"],
            prune_level=settings["prune_level"],
            tta=settings["tta"],
            precision=precision,
            skip_empty=settings["skip_empty"],
            apply_postprocessing=settings["apply_postprocessing"],
            backend=settings["backend"],
            coarse_to_fine=settings["coarse_to_fine"],
        )
        self.writer = ThreadPoolExecutor(1)

    def ready(self) -> str:
        """Where this actor runs: ``pid <P> on <node address> (<device>)``."""
        import ray

        return f"pid {os.getpid()} on {ray.util.get_node_ip_address()} ({self.device})"

    def segment(self, case: Case, target: Path) -> Any:
        """Segment ``case`` into ``target`` as ``medseg predict`` does; its ``CaseReport``."""
        from medseg.pipelines.prediction.predict import (
            CaseReport,
            PredictReport,
            _claims,
            _fail,
            _finish,
            _name_outputs,
            _write,
        )

        keep = self.settings["save_probabilities"]
        report = PredictReport(model="")
        outputs = self.settings["outputs"]
        claims = _claims(
            [(case, target)], self.settings["overwrite"], keep, outputs, report, _ignore
        )
        for claimed, _, lock in claims:
            started = time.perf_counter()
            entry = CaseReport(claimed.id, "failed")
            try:
                result = self.segmenter.infer(self.segmenter.load(claimed), keep_probabilities=keep)
            except Exception as error:
                _fail(entry, claimed, error)
                lock.release()
            else:
                entry = CaseReport(
                    claimed.id, "done", str(target), 0.0, result.windows, result.skipped
                )
                _name_outputs(entry, claimed, target, outputs)
                describer = self.settings["describer"]
                job = self.writer.submit(_write, claimed, result, target, keep, outputs, describer)
                _finish(job, entry, lock)
            entry.seconds = round(time.perf_counter() - started, 3)
            report.cases.append(entry)
        return report.cases[0]


def _ignore(_: str) -> None:
    """A progress callback that draws nothing (the driver draws the bar)."""


def predict_on_ray(
    options: RayOptions,
    model: str,
    todo: list[tuple[Case, Path]],
    settings: dict[str, Any],
    show_progress: bool,
) -> list[Any]:
    """Segment every ``(case, output path)`` of ``todo`` on Ray actors; their ``CaseReport``s.

    Connects to (or starts) Ray as ``options`` say, starts ``options.actors`` actors and
    sends each ready actor the next case. A case whose actor died more often than
    ``options.max_restarts`` fails with that reason; the others go on. Raises
    ``ConfigError`` when Ray is not installed, the cluster cannot hold one actor, or no
    actor could load the model.
    """
    if not todo:
        return []
    from medseg.pipelines.prediction.predict import CaseReport
    from medseg.pipelines.progress import task_progress

    with ray_session(options, model) as ray:
        actor_class = ray.remote(CaseWorker).options(
            num_cpus=options.cpus_per_actor,
            num_gpus=options.gpus_per_actor,
            max_restarts=options.max_restarts,
            max_task_retries=options.max_restarts,
        )
        count = min(options.actors, len(todo))
        actors = [actor_class.remote(model, settings) for _ in range(count)]
        try:
            with task_progress("segmenting on Ray", len(todo), show_progress) as advance:
                reports, left, failure = _segment_all(ray, actors, deque(todo), options, advance)
        finally:
            for actor in actors:
                ray.kill(actor)
    if left and not reports:
        raise ConfigError(f"{model}: no Ray actor could load the model ({failure})")
    for case, _ in left:
        reason = f"{case.image[0]}: no Ray actor left to segment it ({failure}); run again"
        logger.error("%s", reason)
        reports.append(CaseReport(case.id, "failed", error=reason))
    return reports


def _segment_all(
    ray: Any, actors: list[Any], queue: deque, options: RayOptions, advance: Any
) -> tuple[list[Any], deque, str | None]:
    """Send each ready actor the next case of ``queue`` until none is left or no actor is.
    Returns the cases' reports, the cases no actor took and why the first actor that could
    not start failed."""
    from medseg.pipelines.prediction.predict import CaseReport

    starting = {actor.ready.remote(): actor for actor in actors}
    running: dict[Any, tuple[Any, Case]] = {}
    idle: list[Any] = []
    reports: list[Any] = []
    first_failure: str | None = None
    while running or (queue and (starting or idle)):
        while idle and queue:
            actor = idle.pop()
            case, target = queue.popleft()
            running[actor.segment.remote(case, target)] = (actor, case)
        reference = ray.wait([*starting, *running], num_returns=1)[0][0]
        if reference in starting:
            actor = starting.pop(reference)
            try:
                logger.info("Ray actor ready: %s", ray.get(reference))
                idle.append(actor)
            except ray.exceptions.RayError as error:
                first_failure = first_failure or _reason(error)
                logger.warning("a Ray actor could not start: %s", _reason(error))
            continue
        actor, case = running.pop(reference)
        try:
            entry = ray.get(reference)
            idle.append(actor)
        except ray.exceptions.ActorDiedError as error:
            entry = _died(CaseReport, case, options, error)  # restarts used up: drop it
        except ray.exceptions.RayError as error:
            entry = _died(CaseReport, case, options, error)
            idle.append(actor)
        if entry.status == "failed":
            logger.error("%s", entry.error)
        reports.append(entry)
        advance(case.id)
    return reports, queue, first_failure


@contextlib.contextmanager
def ray_session(options: RayOptions, model: str) -> Iterator[Any]:
    """The ``ray`` module, connected as ``options`` say (or as the caller already was) and
    checked to have room for one actor of ``model``; a connection made here is closed at
    the end."""
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "--ray needs Ray: pip install 'medseg[ray]' (on every node of the cluster)"
        ) from None
    owned = not ray.is_initialized()
    if owned:
        _connect(ray, options, model)
    try:
        _require_room(ray, options)
        yield ray
    finally:
        if owned:
            ray.shutdown()


def _connect(ray: Any, options: RayOptions, model: str) -> None:
    # An MLflow model is read by every actor from the driver's tracking server.
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    from_mlflow = uri is not None and any(
        part.strip().startswith(URI_PREFIXES) for part in model.split(",")
    )
    try:
        ray.init(
            address=options.address,
            include_dashboard=False if options.address == LOCAL else None,
            log_to_driver=False,
            logging_level=logging.WARNING,
            runtime_env={"env_vars": {"MLFLOW_TRACKING_URI": uri}} if from_mlflow else None,
        )
    except (ConnectionError, ValueError, RuntimeError) as error:
        raise ConfigError(f"--ray {options.address}: cannot connect ({error})") from None


def _require_room(ray: Any, options: RayOptions) -> None:
    """Refuse actors no node of the cluster could ever hold (they would wait forever)."""
    resources = ray.cluster_resources()
    for name, wanted, flag in (
        ("CPU", options.cpus_per_actor, "--ray-cpus-per-actor"),
        ("GPU", options.gpus_per_actor, "--ray-gpus-per-actor"),
    ):
        if wanted > resources.get(name, 0):
            raise ConfigError(
                f"{flag} {wanted:g}: the Ray cluster at {options.address} has "
                f"{resources.get(name, 0):g} {name}s in all"
            )


def _died(report_type: Any, case: Case, options: RayOptions, error: Exception) -> Any:
    """The failed ``CaseReport`` of a case whose actor kept dying (or raised out of Ray)."""
    message = (
        f"{case.image[0]}: the Ray actor segmenting it failed, {options.max_restarts} "
        f"restarts allowed ({_reason(error)}); run again"
    )
    return report_type(case.id, "failed", error=message)


def _reason(error: Exception) -> str:
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
