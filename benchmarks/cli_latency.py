"""Command-line latency: ``medseg info MODEL`` and ``--help`` of every command, target < 2 s.

Each command runs in a child process of its own, ``--repeats`` times, the commands
alternating so a drift in machine load falls on all; the table gives the median wall time
and the median CPU time (user + system, which a loaded machine inflates less). The
baselines, in the same run: a bare ``python -c pass`` (interpreter start-up), and
``medseg info`` on the same model saved the way models were before their weights recorded
their parameter counts (info then builds the network: torch and MONAI load).

    .venv/bin/python benchmarks/cli_latency.py             # about a minute
    .venv/bin/python benchmarks/cli_latency.py --repeats 1
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import MEDSEG, PYTHON, REPOSITORY, header, markdown_table, median, model_dir

TARGET_SECONDS = 2.0
HELP_COMMANDS = ("synth", "check", "plan", "train", "predict", "evaluate", "prune", "export")


def timed(command: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds (user + system) of ``command`` in its own child process."""
    started = time.perf_counter()
    child = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPOSITORY
    )
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed: {child.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime


def without_recorded_counts(source: Path, target: Path) -> Path:
    """A copy of model directory ``source`` whose weights file has no recorded counts."""
    from safetensors.numpy import load_file, save_file

    target.mkdir()
    (target / "config.yaml").write_text((source / "config.yaml").read_text())
    save_file(load_file(source / "weights.safetensors"), target / "weights.safetensors")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each command")
    arguments = parser.parse_args()
    header("Command-line latency")
    with tempfile.TemporaryDirectory(prefix="medseg-latency-") as folder:
        model = model_dir(Path(folder) / "model", layout="brats", roi_size=(64, 64, 64))
        older = without_recorded_counts(model, Path(folder) / "older_model")
        commands = {
            "python -c pass (baseline)": [PYTHON, "-c", "pass"],
            "medseg info MODEL": [MEDSEG, "info", str(model)],
            "medseg info MODEL (weights without counts: baseline)": [MEDSEG, "info", str(older)],
            "medseg --help": [MEDSEG, "--help"],
            **{f"medseg {name} --help": [MEDSEG, name, "--help"] for name in HELP_COMMANDS},
        }
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
        for _ in range(arguments.repeats):
            for name, command in commands.items():
                times[name].append(timed(command))
    rows = []
    for name, measured in times.items():
        wall = median([w for w, _ in measured])
        cpu = median([c for _, c in measured])
        rows.append((name, wall, cpu))
    print(markdown_table(["command", "wall s (median)", "CPU s (median)"], rows))
    info = dict((name, wall) for name, wall, _ in rows)
    speedup = (
        info["medseg info MODEL (weights without counts: baseline)"] / info["medseg info MODEL"]
    )
    print(f"\nmedseg info: {speedup:.1f}x faster than building the network")
    own = [(wall, cpu, name) for name, wall, cpu in rows if not name.endswith("baseline)")]
    for kind, index in (("wall", 0), ("CPU", 1)):
        worst = max(own, key=lambda row: row[index])
        verdict = "PASS" if worst[index] < TARGET_SECONDS else "MISS"
        print(f"{verdict} ({kind} time): slowest {worst[2]!r} {worst[index]:.2f} s (target < 2 s)")


if __name__ == "__main__":
    sys.exit(main())
