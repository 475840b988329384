"""MLflow tracking that never stops the work it tracks.

The URI is ``MLFLOW_TRACKING_URI`` when set, else MLflow's own default (a SQLite file,
``mlflow.db``, in the working directory). When the tracking server cannot be reached,
``Tracker`` logs one warning and carries on without tracking.
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
    """

    def __init__(
        self,
        *,
        enabled: bool = True,
        experiment: str = "medseg",
        run_name: str | None = None,
        run_id: str | None = None,
    ) -> None:
        self.enabled = enabled
        self.experiment = experiment
        self.run_name = run_name
        self.run_id = run_id
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
        self._mlflow = mlflow

    def _call(self, action: Any) -> None:
        try:
            action()
        except Exception as error:  # tracking must never stop the run it tracks
            logger.warning(
                "MLflow tracking at %s failed (%s); continuing without tracking",
                self.uri,
                str(error).splitlines()[0] if str(error) else type(error).__name__,
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

    def log_model(self, model_dir: Path, network: Any, register: str | None = None) -> str | None:
        """Log ``network`` as an MLflow PyTorch model carrying the medseg model directory's
        files, and register it as ``register`` when given; returns the model URI or None.

        ``mlflow.pytorch.load_model`` gives the network to plain-MLflow users; medseg itself
        reads only the ``config.yaml`` and ``weights.safetensors`` inside, never the pickle.
        """
        if not self.active:
            return None
        import torch

        from medseg import __version__

        uri: list[str] = []

        def log() -> None:
            import mlflow.pytorch

            files = [str(Path(model_dir) / name) for name in ("config.yaml", "weights.safetensors")]
            requirements = [f"medseg=={__version__}", f"torch=={torch.__version__.split('+')[0]}"]
            # "pickle" rather than MLflow's default "pt2": torch.export needs an input example
            # of a fixed shape, while the network takes any sliding-window size.
            info = mlflow.pytorch.log_model(
                network,
                name="pytorch_model",
                extra_files=files,
                pip_requirements=requirements,
                serialization_format="pickle",
            )
            uri.append(info.model_uri)
            if register:
                version = self._mlflow.register_model(info.model_uri, register)
                logger.info("registered model %s version %s", register, version.version)

        self._call(log)
        return uri[0] if uri else None
