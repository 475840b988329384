"""What an operator sees of a tiny train -> predict -> evaluate --track run without a
terminal (a batch job): plain time-stamped lines, nothing from other libraries, and MLflow
runs that link up (1-based steps, the dataset, the code version, no pickled model)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

MEDSEG = str(Path(sys.executable).with_name("medseg"))
STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) +\S")
# Text that only another library's warning or retry chatter would put on stderr.
FOREIGN = ("Warning", "warnings.warn", "nvImageCodec", "Pickle", "urllib3", "Retrying", "mlflow.")


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """One tiny tracked training, its predictions and their tracked evaluation, each run
    as its own ``medseg`` process with stdout and stderr captured (pipes, not a TTY)."""
    from medseg.datasets.synthetic import synthesize

    root = tmp_path_factory.mktemp("operator")
    data = root / "brats_data"
    synthesize("brats", data, cases=4, shape=(32, 32, 24), seed=3)
    config = {
        "data": {"layout": "brats", "root": str(data), "folds": 2},
        "network": {"name": "unetpp", "preset": "tiny", "options": {"features": [4, 8, 16]}},
        "transforms": {"patch_size": [16, 16, 16], "samples_per_case": 2},
        "train": {"epochs": 2, "batch_size": 2, "lr": 0.01, "val_every": 1},
        "infer": {"overlap": 0.25, "sw_batch_size": 4},
        "output": str(root / "run"),
        "tracking": {"enabled": True, "experiment": "operator", "run_name": "tiny-operator"},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    env = os.environ | {
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "OMP_NUM_THREADS": "1",
        "COLUMNS": "80",
    }

    def medseg(*args) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [MEDSEG, *map(str, args)],
            capture_output=True,
            text=True,
            encoding="utf-8",
            env=env,
            cwd=root,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 0, done.stderr
        return done

    log = root / "logs" / "train.log"
    return {
        "root": root,
        "data": data,
        "log": log,
        "uri": env["MLFLOW_TRACKING_URI"],
        "train": medseg("--log-file", log, "train", root / "config.yaml"),
        "predict": medseg("predict", root / "run" / "model", data, "--output", root / "pred"),
        "evaluate": medseg("evaluate", root / "pred", data, "--track", "--workers", "2"),
    }


@pytest.fixture(scope="module")
def client(session):
    import mlflow

    return mlflow.MlflowClient(session["uri"])


@pytest.fixture(scope="module")
def training_run(session, client):
    experiment = client.get_experiment_by_name("operator")
    (run,) = client.search_runs([experiment.experiment_id], "tags.mlflow.runName = 'tiny-operator'")
    return run


@pytest.mark.parametrize("command", ["train", "predict", "evaluate"])
def test_log_lines_are_time_stamped_whole_and_medseg_own(session, command):
    lines = session[command].stderr.splitlines()
    assert lines
    for line in lines:
        assert STAMP.match(line), line  # a wrapped tail or a library's line has no stamp
        assert line == line.rstrip(), repr(line)  # never padded to a console width
        assert not any(text in line for text in FOREIGN), line
    assert all(line == line.rstrip() for line in session[command].stdout.splitlines())


def test_training_log_shows_each_step_epoch_duration_and_eta(session):
    text = session["train"].stderr
    assert re.search(r"INFO +training unetpp \(tiny\) on cpu from epoch 1 to 2", text)
    assert re.search(r"INFO +validating 2/2 BraTS2021_\d+ \(\d+\.\d s, ETA", text)
    # The whole epoch line (longer than 80 columns) on one line, where grep finds it.
    last = re.search(
        r"epoch 2/2  loss \S+  val loss \S+  val dice TC \S+ WT \S+ ET \S+ mean .*", text
    )
    assert last is not None and re.search(r"\d+\.\d s, ETA 0\.0 s$", last.group(0))
    assert len(last.group(0)) > 80


def test_log_file_holds_the_plain_lines_of_every_step(session):
    written = session["log"].read_text(encoding="utf-8").splitlines()
    assert written == session["train"].stderr.splitlines()


def test_predict_and_evaluate_log_a_line_per_case(session):
    segmented = re.findall(r"segmenting \d/4 (BraTS2021_\d+) done", session["predict"].stderr)
    scored = re.findall(r"scoring \d/4 (BraTS2021_\d+) mean Dice", session["evaluate"].stderr)
    assert sorted(segmented) == sorted(scored) == [f"BraTS2021_0000{k}" for k in range(4)]


def test_epochs_count_from_one_in_mlflow_summary_and_model(
    session, client, training_run, medseg_cli
):
    run_id = training_run.info.run_id
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [1, 2]
    validated = client.get_metric_history(run_id, "val/dice_mean")
    assert [m.step for m in validated] == [1, 2]
    assert [m.step for m in client.get_metric_history(run_id, "val/loss")] == [1, 2]
    summary = json.loads((session["root"] / "run" / "training_summary.json").read_text())
    best = max(validated, key=lambda m: (m.value, -m.step))
    assert summary["best_epoch"] == best.step == summary["validation"]["epoch"]
    info = medseg_cli("info", session["root"] / "run" / "model", "--json")
    assert info.code == 0, info.err
    details = json.loads(info.out)
    assert details["training"]["epoch"] == best.step
    assert details["provenance"]["mlflow_run_id"] == run_id
    assert f"(epoch {best.step})" in session["train"].stdout


def test_training_run_records_dataset_and_code_version(session, training_run):
    from medseg import __version__
    from medseg.pipelines.provenance import git_commit

    tags = training_run.data.tags
    assert tags["medseg.version"] == __version__
    assert tags.get("mlflow.source.git.commit") == git_commit()
    (entry,) = training_run.inputs.dataset_inputs
    fingerprint = (session["root"] / "run" / "fingerprint.json").read_bytes()
    assert entry.dataset.name == session["data"].name
    assert entry.dataset.digest == hashlib.sha256(fingerprint).hexdigest()[:36]
    input_tags = {tag.key: tag.value for tag in entry.tags}
    assert input_tags["layout"] == "brats"
    assert input_tags["mlflow.data.context"] == "training"


def test_no_pickle_among_the_run_artifacts(client, training_run):
    def walk(path=None):
        for item in client.list_artifacts(training_run.info.run_id, path):
            yield from walk(item.path) if item.is_dir else [item.path]

    artifacts = set(walk())
    assert {"model/config.yaml", "model/weights.safetensors"} <= artifacts
    assert not [name for name in artifacts if name.endswith((".pkl", ".pth", ".pt", "MLmodel"))]


def test_train_prints_its_run_page_not_the_ui_home(session, training_run):
    run = training_run.info
    page = f"/#/experiments/{run.experiment_id}/runs/{run.run_id}"
    stdout = session["train"].stdout
    assert f"mlflow ui --backend-store-uri {session['uri']}" in stdout
    assert f"http://127.0.0.1:5000{page}" in stdout


def test_tracked_evaluation_joins_the_training_run(session, client, training_run):
    runs = client.search_runs(
        [training_run.info.experiment_id],
        f"tags.`medseg.training_run_id` = '{training_run.info.run_id}'",
    )
    (evaluation,) = runs
    tags = evaluation.data.tags
    assert tags["mlflow.parentRunId"] == training_run.info.run_id
    assert tags["medseg.model"] == str(session["root"] / "run" / "model")
    assert tags["medseg.predictions"] == str((session["root"] / "pred").resolve())
    assert tags["medseg.references"] == str(session["data"].resolve())
    assert "eval/dice_mean" in evaluation.data.metrics


def test_a_tracking_server_gets_a_direct_link(monkeypatch):
    from medseg.pipelines.tracking import Tracker

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://mlflow.example.org/")
    tracker = Tracker(run_id="0123abcd", experiment_id="7")
    assert tracker.links() == [
        "MLflow run: https://mlflow.example.org/#/experiments/7/runs/0123abcd"
    ]


def test_info_on_a_model_directory_imports_neither_torch_nor_monai(session):
    script = (
        "import sys; from medseg.pipelines.info import info_table, model_info; "
        f"info_table(model_info({str(session['root'] / 'run' / 'model')!r})); "
        "print(sorted({'torch', 'monai'} & set(sys.modules)))"
    )
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert loaded.stdout.strip() == "[]", loaded.stderr
