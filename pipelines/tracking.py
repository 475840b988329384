"""MLflow tracking that never stops the work it tracks.

The URI is ``MLFLOW_TRACKING_URI`` when set, else MLflow's own default (a SQLite file,
``mlflow.db``, in the working directory). When the tracking server cannot be reached,
``Tracker`` logs one warning and carries on without tracking. Models go to MLflow as the
model directory's files (``config.yaml``, ``weights.safetensors``): nothing pickled.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# MLflow retries an unreachable server for minutes by default; a few quick tries are
# enough to tell a typo'd URI from a busy server without stalling training.
_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
# MLflow's own INFO lines (database migrations on first use) would interleave with ours.
_QUIET = {"MLFLOW_LOGGING_LEVEL": "WARNING"}
# Where ``mlflow ui`` serves by default.
LOCAL_UI = "http://127.0.0.1:5000"
# The run's tags that link an evaluation to the training run and the files it scored.
TRAINING_RUN_TAG = "medseg.training_run_id"


def limit_http_retries() -> None:
    """Cap MLflow's retries of an unreachable server (and quiet its INFO lines), unless the
    environment already sets them: training, predict and prune all reach MLflow this way."""
    for key, value in (_HTTP_DEFAULTS | _QUIET).items():
        os.environ.setdefault(key, value)


class Tracker:
    """One MLflow run; every method is a no-op once tracking is off or has failed.

    Args:
        enabled: track at all.
        experiment: MLflow experiment name (created when missing).
        run_name: display name of a new run.
        run_id: an existing run to continue (resume) instead of starting a new one.
        experiment_id: the experiment by id (another run's), in place of ``experiment``.
    """

    def __init__(
        self,
        *,
        enabled: bool = True,
        experiment: str = "medseg",
        run_name: str | None = None,
        run_id: str | None = None,
        experiment_id: str | None = None,
    ) -> None:
        self.enabled = enabled
        self.experiment = experiment
        self.run_name = run_name
        self.run_id = run_id
        self.experiment_id = experiment_id
        self._mlflow: Any = None

    def __enter__(self) -> Tracker:
        if self.enabled:
            self._call(self._start)
        return self

    def __exit__(self, kind: object, error: object, traceback: object) -> None:
        if self._mlflow is not None:
            status = "FINISHED" if error is None else "FAILED"
            self._call(lambda: self._mlflow.end_run(status=status))

    def _start(self) -> None:
        limit_http_retries()
        import mlflow

        # An explicit experiment id, not mlflow.set_experiment: that would leave a global
        # active experiment behind, wrong for the next run if the tracking URI changes.
        client = mlflow.MlflowClient()
        experiment_id = self.experiment_id
        if experiment_id is None and self.run_id is None:
            experiment = client.get_experiment_by_name(self.experiment)
            if experiment is None:
                experiment_id = client.create_experiment(self.experiment)
            else:
                experiment_id = experiment.experiment_id
        run = mlflow.start_run(
            run_id=self.run_id,
            experiment_id=None if self.run_id else experiment_id,
            run_name=None if self.run_id else self.run_name,
            nested=mlflow.active_run() is not None,
        )
        self.run_id = run.info.run_id
        self.experiment_id = run.info.experiment_id
        self._mlflow = mlflow

    def _call(self, action: Any) -> None:
        try:
            action()
        except Exception as error:  # tracking must never stop the run it tracks
            logger.warning(
                "MLflow tracking at %s failed (%s); continuing without tracking",
                self.uri,
                _reason(error),
            )
            self._mlflow = None
            self.enabled = False

    @property
    def active(self) -> bool:
        """Whether a run is open and calls are being recorded."""
        return self._mlflow is not None

    @property
    def uri(self) -> str:
        """The tracking URI in use (MLflow's default when the variable is unset)."""
        if self._mlflow is not None:
            return str(self._mlflow.get_tracking_uri())
        return os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{Path.cwd() / 'mlflow.db'}")

    def log_params(self, params: dict[str, Any]) -> None:
        """Log parameters (values are stringified; MLflow caps each at 6000 characters)."""
        if self.active:
            clean = {k: str(v)[:6000] for k, v in params.items()}
            self._call(lambda: self._mlflow.log_params(clean))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Log finite metrics at ``step`` (NaN and Inf are left out, MLflow rejects them)."""
        finite = {k: float(v) for k, v in metrics.items() if math.isfinite(float(v))}
        if self.active and finite:
            self._call(lambda: self._mlflow.log_metrics(finite, step=step))

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        """Upload a file, or a folder's contents, under the run's ``folder``."""
        if not self.active:
            return
        if Path(path).is_dir():
            self._call(lambda: self._mlflow.log_artifacts(str(path), artifact_path=folder))
        else:
            self._call(lambda: self._mlflow.log_artifact(str(path), artifact_path=folder))

    def set_tags(self, tags: dict[str, str]) -> None:
        """Tag the run."""
        if self.active:
            self._call(lambda: self._mlflow.set_tags(tags))

    def log_model(self, model_dir: Path, register: str | None = None) -> str | None:
        """Upload the model directory as the run's ``model`` artifacts and register them as
        model ``register`` when given; returns ``runs:/<run id>/model``, or None untracked.

        Only the directory's own files go up (``config.yaml``, ``weights.safetensors``), so
        loading the model from MLflow (``medseg predict runs:/.../model`` or
        ``models:/NAME/VERSION``) never unpickles anything.
        """
        if not self.active:
            return None
        uri: list[str] = []

        def log() -> None:
            self._mlflow.log_artifacts(str(model_dir), artifact_path="model")
            uri.append(f"runs:/{self.run_id}/model")
            if register:
                version = self._register(register)
                logger.info("registered model %s version %s", register, version)

        self._call(log)
        return uri[0] if uri else None

    def _register(self, name: str) -> str:
        """A new version of registered model ``name`` from this run's ``model`` artifacts."""
        from mlflow.exceptions import MlflowException

        client = self._mlflow.MlflowClient()
        try:
            client.create_registered_model(name)
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        source = f"{client.get_run(self.run_id).info.artifact_uri.rstrip('/')}/model"
        return str(client.create_model_version(name, source, run_id=self.run_id).version)

    def log_dataset(self, root: Path, digest: str, tags: dict[str, str]) -> None:
        """Record the data under ``root`` as the run's training dataset input: named after
        the folder, with ``digest`` (at most 36 characters) and ``tags``."""
        if not self.active:
            return

        def log() -> None:
            from mlflow.data.dataset_source_registry import resolve_dataset_source
            from mlflow.data.meta_dataset import MetaDataset

            source = resolve_dataset_source(str(Path(root).resolve()))
            dataset = MetaDataset(source=source, name=Path(root).name, digest=digest[:36])
            self._mlflow.log_input(dataset, context="training", tags=tags)

        self._call(log)

    def links(self) -> list[str]:
        """Lines telling a user where to see the run: its page when the tracking server is
        an http(s) URI; else the ``mlflow ui`` command for the local store and the page it
        serves. Empty when nothing was tracked."""
        if self.run_id is None or self.experiment_id is None:
            return []
        page = f"/#/experiments/{self.experiment_id}/runs/{self.run_id}"
        uri = self.uri
        if uri.startswith(("http://", "https://")):
            return [f"MLflow run: {uri.rstrip('/')}{page}"]
        return [
            f"MLflow run {self.run_id} in {uri}",
            f"to see it: mlflow ui --backend-store-uri {uri}  then open {LOCAL_UI}{page}",
        ]


def code_version_tags() -> dict[str, str]:
    """MLflow tags naming the code that ran: medseg's version and, from a git checkout, its
    commit (under MLflow's own key, which its UI shows as the run's source version)."""
    from medseg import __version__
    from medseg.pipelines.provenance import git_commit

    tags = {"medseg.version": __version__}
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def training_run_id(model: str) -> str | None:
    """The MLflow run that trained ``model`` (a ``runs:/`` or ``models:/`` URI, or a model
    or run directory or checkpoint whose model recorded its run); None when unknown."""
    if model.startswith("runs:/"):
        return model.removeprefix("runs:/").split("/")[0] or None
    if model.startswith("models:/"):
        name, _, version = model.removeprefix("models:/").partition("/")
        try:
            limit_http_retries()
            import mlflow

            return mlflow.MlflowClient().get_model_version(name, version).run_id or None
        except Exception:  # a model alias or a vanished registry: no link, no failure
            return None
    from medseg.files import read_regular_text
    from medseg.yaml_input import load_yaml

    path = Path(model)
    for folder in (path, path / "model", path.parent / "model"):
        config = folder / "config.yaml"
        if config.is_file():
            try:
                recorded = load_yaml(read_regular_text(config), str(config))["provenance"]
                run_id = recorded.get("mlflow_run_id")
            except Exception:  # an unreadable config names no run
                return None
            return str(run_id) if run_id else None
    return None


def _reason(error: BaseException) -> str:
    """The first line of ``error``, or for an unreachable server just that."""
    cause: BaseException | None = error
    while cause is not None:
        if type(cause).__name__ in ("ConnectionError", "NewConnectionError", "MaxRetryError"):
            return "server unreachable"
        cause = cause.__cause__ or cause.__context__
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    if "Max retries exceeded" in text or "Failed to establish a new connection" in text:
        return "server unreachable"
    return text
