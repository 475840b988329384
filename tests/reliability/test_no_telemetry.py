"""medseg calls out to nobody: the usage telemetry that MLflow and OpenVINO switch on by
default (an installation id in the user's home, events sent to their makers) stays off in
a medseg process, unless the user's own environment turns MLflow's back on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# What a medseg process does with the two libraries: MONAI (which imports MLflow), a tracked
# run, and the OpenVINO runtime as the openvino backend loads it.
SCRIPT = """
import medseg, monai, mlflow
from medseg.pipelines.prediction.backends import import_openvino
import_openvino().Core()
mlflow.set_tracking_uri("sqlite:///" + sys.argv[1])
with mlflow.start_run():
    mlflow.log_metric("dice", 0.9)
import importlib.util
assert "openvino.tools.ovc" not in sys.modules
assert importlib.util.find_spec("openvino.tools.ovc")  # importable for the user's own code
"""


def run_in_clean_home(home: Path, **extra: str) -> None:
    """SCRIPT in a fresh process whose HOME is ``home``, with none of the CI variables
    (pytest's own among them) under which both libraries keep quiet by themselves."""
    environment = {"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8", **extra}
    done = subprocess.run(
        [sys.executable, "-c", "import sys\n" + SCRIPT, str(home / "mlflow.db")],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_no_installation_ids_or_events_from_mlflow_or_openvino(tmp_path):
    run_in_clean_home(tmp_path)
    assert not (tmp_path / "intel").exists()  # OpenVINO's client id and consent files
    assert not (tmp_path / ".config" / "mlflow" / "telemetry.json").exists()


def test_the_users_own_choice_for_mlflow_is_kept(tmp_path):
    run_in_clean_home(tmp_path, MLFLOW_DISABLE_TELEMETRY="false")
    assert (tmp_path / ".config" / "mlflow" / "telemetry.json").exists()
