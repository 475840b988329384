"""``medseg predict --ray`` on a real two-node Ray cluster on loopback: the outputs of a plain
run byte for byte, nothing lost when an actor is killed mid-case, and a rerun skips."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medseg.errors import ConfigError
from medseg.pipelines.prediction.predict import predict
from medseg.pipelines.prediction.ray_predict import RayOptions

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None,
    reason="Ray is not installed (pip install -c constraints.txt -e '.[dev]' brings it)",
)

MEDSEG = str(Path(sys.executable).with_name("medseg"))
CASES = [f"BraTS2021_{i:05d}" for i in range(5)]
BROKEN = "BraTS2021_00005"
# Ray turns 127.0.0.1 into the machine's outward address unless told that this is a
# one-machine set-up, which keeps every node, the driver and the actors on loopback.
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
NODE = {"num_cpus": 1, "object_store_memory": 80 * 2**20, "node_ip_address": "127.0.0.1"}


@pytest.fixture(scope="module")
def ray_cluster():
    """The address of a Ray cluster of a head node and one worker node (their own processes,
    one CPU each), shut down at the end of the module whatever happens. Ray's own test
    helper starts them: ``ray start --address`` refuses to add a node on a loopback-only
    cluster."""
    previous = {name: os.environ.get(name) for name in LOOPBACK}
    os.environ.update(LOOPBACK)
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args=NODE | {"include_dashboard": False})
    try:
        cluster.add_node(**NODE)
        yield cluster.address
    finally:
        cluster.shutdown()
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Five good BraTS cases and one whose T1 file is corrupt."""
    from medseg.datasets.synthetic import synthesize

    root = tmp_path_factory.mktemp("ray_cases")
    synthesize("brats", root, cases=6, shape=(32, 32, 32), seed=5)
    broken = root / BROKEN / f"{BROKEN}_t1.nii.gz"
    broken.write_bytes(b"\x1f\x8b" + os.urandom(200))
    return root


@pytest.fixture(scope="module")
def plain_outputs(tmp_path_factory, brats_model_dir, cohort):
    """The label maps plain ``medseg predict`` writes (one thread, as each actor has)."""
    output = tmp_path_factory.mktemp("plain") / "out"
    predict(brats_model_dir, [str(cohort)], output, show_progress=False)
    return {case: (output / f"{case}.nii.gz").read_bytes() for case in CASES}


def lock_holder(lock: Path) -> int | None:
    """The process holding the ``flock`` on ``lock`` (from /proc/locks), if any."""
    try:
        inode = lock.stat().st_ino
    except FileNotFoundError:
        return None
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "FLOCK" in fields and fields[5].endswith(f":{inode}"):
            return int(fields[4])
    return None


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory, brats_model_dir, cohort, ray_cluster):
    """A ``--ray`` run with two actors in which the actor segmenting a case is killed
    (SIGKILL) while it holds the case: the output folder, the exit status, the case."""
    output = tmp_path_factory.mktemp("ray") / "out"
    command = [MEDSEG, "predict", str(brats_model_dir), str(cohort), "-o", str(output)]
    command += ["--ray", ray_cluster, "--ray-actors", "2"]
    driver = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ | LOOPBACK,
    )
    killed = None
    # Ray's actors took 2 min 10 s to start on a 2-core machine at load 6; the loop ends as
    # soon as the run does, so a long deadline costs nothing when all is well
    deadline = time.monotonic() + 300
    while killed is None and time.monotonic() < deadline and driver.poll() is None:
        for case in CASES:
            holder = lock_holder(output / f".{case}.nii.gz.lock")
            if holder is not None and holder != driver.pid:
                os.kill(holder, signal.SIGKILL)
                killed = (case, holder)
                break
        time.sleep(0.005)
    try:
        log, _ = driver.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        driver.kill()
        pytest.fail("the Ray run did not finish in 5 minutes")
    assert killed is not None, f"no actor was seen holding a case:\n{log[-3000:]}"
    return output, driver.returncode, killed, log


def test_ray_outputs_equal_plain_predict_byte_for_byte(killed_run, plain_outputs):
    output, _, _, log = killed_run
    for case, expected in plain_outputs.items():
        assert (output / f"{case}.nii.gz").read_bytes() == expected, (case, log[-2000:])


def test_a_killed_actor_loses_nothing_and_leaves_no_partial_file(killed_run):
    output, _, (case, pid), log = killed_run
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    report = json.loads((output / "predict_report.json").read_text())
    statuses = {entry["case"]: entry["status"] for entry in report["cases"]}
    assert statuses[case] == "done", log[-2000:]
    assert [entry for entry in statuses.values() if entry == "done"] == ["done"] * len(CASES)
    assert not [path.name for path in output.iterdir() if path.name.startswith(".")]


def test_a_failing_case_is_reported_and_the_rest_done(killed_run):
    output, code, _, log = killed_run
    assert code == 1, log[-2000:]
    assert f"{BROKEN}_t1.nii.gz" in log
    report = json.loads((output / "predict_report.json").read_text())
    assert [entry["case"] for entry in report["cases"]] == [*CASES, BROKEN]
    assert report["cases"][-1]["status"] == "failed"


def test_rerun_skips_every_finished_case(
    tmp_path, killed_run, brats_model_dir, cohort, ray_cluster
):
    output = tmp_path / "out"
    shutil.copytree(killed_run[0], output)
    written = {case: (output / f"{case}.nii.gz").stat().st_mtime_ns for case in CASES}
    report = predict(
        brats_model_dir,
        [str(cohort / case) for case in CASES],
        output,
        ray=RayOptions(address=ray_cluster),
        show_progress=False,
    )
    assert [entry.status for entry in report.cases] == ["skipped"] * len(CASES)
    assert {case: (output / f"{case}.nii.gz").stat().st_mtime_ns for case in CASES} == written


def test_a_relative_path_is_refused_on_a_cluster():
    options = RayOptions(address="auto")
    with pytest.raises(ConfigError, match="relative path"):
        options.reachable_paths("/models/m", ["data/ct"], Path("/results"))
    assert RayOptions().reachable_paths("m", ["data"], Path("out"))[1] == [str(Path.cwd() / "data")]


def test_ray_settings_without_ray_are_refused(tmp_path, medseg_cli, brats_model_dir):
    result = medseg_cli("predict", brats_model_dir, tmp_path, "-o", tmp_path / "out",
                        "--ray-actors", "2")  # fmt: skip
    assert result.code == 2
    assert "need --ray" in result.err
