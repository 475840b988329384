"""What every benchmark script shares: the machine's description, model directories built
from untrained networks, runs measured in their own process, and Markdown tables.

Each side of a comparison runs in a child process of its own, so its peak RSS is its own;
the two sides alternate within one session, so a slow drift in machine load (other
processes on a shared machine) falls on both.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPOSITORY = HERE.parent
PYTHON = sys.executable
MEDSEG = str(Path(sys.executable).with_name("medseg"))


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (the platform's processor string elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="ascii").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def vector_extensions() -> str:
    """The widest SIMD extensions the CPU reports (they bound the float32 matmul rate)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="ascii")
    except OSError:
        return "unknown"
    flags = next((line for line in text.splitlines() if line.startswith("flags")), "").split()
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile")
    return " ".join(flag for flag in wanted if flag in flags) or "none of avx2/avx512"


def memory_gib() -> float:
    """Total memory of the machine in GiB."""
    try:
        for line in Path("/proc/meminfo").read_text(encoding="ascii").splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def machine(threads: int | None = None) -> str:
    """One line naming the machine: CPU, cores usable, memory, torch threads, versions."""
    import monai
    import torch

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{cpu_model()} ({vector_extensions()}), {usable} cores usable, "
        f"{memory_gib():.0f} GiB, torch {torch.__version__} with "
        f"{threads or torch.get_num_threads()} intra-op threads, MONAI {monai.__version__}, "
        f"Python {platform.python_version()}; load average at start {load:.1f}"
    )


def command_line() -> str:
    """The command that reproduces this run, as typed from the repository root."""
    script = Path(sys.argv[0]).resolve()
    with contextlib.suppress(ValueError):  # a script outside the repository keeps its path
        script = script.relative_to(REPOSITORY)
    return shlex.join([".venv/bin/python", str(script), *sys.argv[1:]])


def header(title: str, threads: int | None = None) -> None:
    """Print the benchmark's title, machine and reproducing command."""
    print(f"## {title}\n")
    print(f"machine: {machine(threads)}")
    print(f"command: `{command_line()}`\n")


def window_arguments(
    parser: argparse.ArgumentParser, *, overlap: float, sw_batch_size: int | None = None
) -> None:
    """Add the sliding-window settings of the model directories a script builds: ``--roi``
    (cube side, default 64), ``--overlap`` and, when ``sw_batch_size`` is given,
    ``--sw-batch-size``, with these defaults."""
    parser.add_argument("--roi", type=int, default=64, help="sliding-window size (cube)")
    parser.add_argument("--overlap", type=float, default=overlap, help="sliding-window overlap")
    if sw_batch_size is not None:
        parser.add_argument(
            "--sw-batch-size", type=int, default=sw_batch_size, help="windows per forward"
        )


WAIT_POLICIES = ("active", "passive")


def thread_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--threads`` (intra-op threads of every side, default: the cores usable) and
    ``--wait-policy`` (OMP_WAIT_POLICY of every side: active, passive or both, default both;
    OpenMP reads it once at start, so each policy needs processes of its own)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parser.add_argument("--threads", type=int, default=usable, help="intra-op threads, all sides")
    parser.add_argument(
        "--wait-policy",
        choices=[*WAIT_POLICIES, "both"],
        default="both",
        help="OMP_WAIT_POLICY of every side (both: the whole comparison under each)",
    )


def wait_policies(choice: str) -> list[str]:
    """The OMP_WAIT_POLICY values ``--wait-policy`` asks for."""
    return list(WAIT_POLICIES) if choice == "both" else [choice]


def thread_environment(threads: int, wait_policy: str) -> dict[str, str]:
    """The environment every side of a comparison runs in: the same OpenMP thread count
    (torch's intra-op threads follow OMP_NUM_THREADS; ONNX Runtime and OpenVINO take
    medseg's ``torch.get_num_threads()``) and the same OMP_WAIT_POLICY."""
    return os.environ | {"OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": wait_policy}


def each_wait_policy(
    args: argparse.Namespace,
    run: Callable[[dict[str, str]], Any],
    extra: dict[str, str] | None = None,
) -> list[Any]:
    """Call ``run(environment)`` once per OMP_WAIT_POLICY ``--wait-policy`` asks for, in
    ``thread_environment`` of ``--threads`` plus ``extra``, each after printing its thread
    settings; return what the calls returned, in order."""
    results = []
    for policy in wait_policies(args.wait_policy):
        environment = thread_environment(args.threads, policy) | (extra or {})
        print(f"### thread settings, every side: {thread_settings(environment)}\n")
        results.append(run(environment))
    return results


def thread_settings(environment: dict[str, str]) -> str:
    """The thread settings of ``environment`` as printed with each result."""
    return (
        f"OMP_NUM_THREADS={environment.get('OMP_NUM_THREADS', '(unset)')} "
        f"OMP_WAIT_POLICY={environment.get('OMP_WAIT_POLICY', '(unset)')}"
    )


@dataclass
class Run:
    """A child process's wall time (s), peak resident memory (bytes) and exit status;
    ``tree_peak``: the peak of ``tree_memory`` over its run (bytes; 0 when not sampled)."""

    seconds: float
    peak_rss: int
    returncode: int
    output: str
    tree_peak: int = 0


def measured_run(
    command: Sequence[str], *, env: dict[str, str] | None = None, tree: bool = False
) -> Run:
    """Run ``command`` in a child process; its own wall time and peak RSS, from ``wait4``.

    ``wait4`` gives the rusage of that one child and of the descendants it waited for, the
    largest single process's peak among them (``RUSAGE_CHILDREN`` would give the largest
    of all children so far). With ``tree``, ``tree_memory`` of the child and its
    descendants is also sampled every ``TREE_SAMPLE_S`` seconds: the memory of a program
    that spreads its work over worker processes. Output is captured to a temporary file,
    not a pipe, so a chatty child never blocks.
    """
    import tempfile
    import threading

    with tempfile.TemporaryFile() as log:
        started = time.perf_counter()
        child = subprocess.Popen(
            list(command), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPOSITORY
        )
        done, peaks = threading.Event(), [0]

        def sample() -> None:
            while not done.wait(TREE_SAMPLE_S):
                peaks[0] = max(peaks[0], tree_memory(child.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        if tree:
            sampler.start()
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - started
        done.set()
        if tree:
            sampler.join()
        child.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        output = log.read().decode(errors="replace")
    return Run(seconds, usage.ru_maxrss * 1024, child.returncode, output, peaks[0])


TREE_SAMPLE_S = 0.2


def tree_memory(pid: int) -> int:
    """Bytes held by process ``pid`` and all its descendants: the sum of their proportional
    set sizes (``Pss`` of /proc/PID/smaps_rollup: a page shared by n processes counts 1/n
    in each, so libraries every worker maps count once). 0 without /proc. Read from /proc
    by hand because psutil is no dependency of medseg."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                # The command name in parentheses may hold spaces: the fields follow its ")".
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                parents[int(entry.name)] = int(fields[1])
    family, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent]
        family.update(children)
        frontier += children
    total = 0
    for member in family:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
    return total


def require_success(run: Run, what: str) -> None:
    """Stop the benchmark, showing the child's output, when ``run`` failed."""
    if run.returncode != 0:
        raise SystemExit(f"{what} failed (exit {run.returncode}):\n{run.output[-3000:]}")


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table; floats keep what ``format_value`` gives them."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(format_value(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def format_value(value: Any) -> str:
    """Three significant figures for floats, the rest as text."""
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def median(values: Sequence[float]) -> float:
    """The median, or NaN for no values."""
    return statistics.median(values) if values else float("nan")


def gib(size: int) -> float:
    """Bytes -> GiB."""
    return size / 2**30


def label_dice(first: np.ndarray, second: np.ndarray) -> dict[int, float]:
    """Dice of every non-zero label value present in either map (1.0 when both lack it)."""
    values = np.union1d(np.unique(first), np.unique(second))
    result = {}
    for value in values[values != 0]:
        a, b = first == value, second == value
        total = int(a.sum()) + int(b.sum())
        result[int(value)] = 2 * int((a & b).sum()) / total if total else 1.0
    return result


def model_dir(
    directory: Path,
    *,
    layout: str,
    network: str = "unetpp",
    preset: str = "tiny",
    options: dict[str, Any] | None = None,
    roi_size: Sequence[int],
    spacing: Sequence[float] | None = None,
    overlap: float = 0.5,
    sw_batch_size: int = 2,
    intensity: dict[str, float] | None = None,
    seed: int = 0,
) -> Path:
    """Write a model directory holding an untrained ``network`` for ``layout``'s data.

    The network is seeded, so every script (and both sides of a comparison) reads the same
    weights. BraTS: 4 MRI channels in, 3 regions out; LiTS: 1 CT channel in (``intensity``
    holds its window and statistics), 3 classes out. Foreground cropping is on, as
    ``medseg train`` sets it for MRI and CT.
    """
    import torch

    from medseg.datasets.brats import CHANNEL_NAMES, RELEASES
    from medseg.datasets.lits import LABELS as LITS_LABELS
    from medseg.pipelines.model_dir import (
        InferenceSpec,
        ModelConfig,
        NetworkSpec,
        build_from_config,
        save_model_dir,
    )
    from medseg.transforms.presets import Preprocessing

    if layout == "brats":
        channels, modality, labels = list(CHANNEL_NAMES), "mri", RELEASES[0].labels()
    elif layout == "lits":
        channels, modality, labels = ["ct"], "ct", LITS_LABELS
    else:
        raise ValueError(f"benchmarks build brats or lits models, not {layout!r}")
    config = ModelConfig(
        network=NetworkSpec(
            name=network,
            preset=preset,
            spatial_dims=len(roi_size),
            in_channels=len(channels),
            out_channels=labels.out_channels,
            options=dict(options or {}),
        ),
        preprocessing=Preprocessing(
            layout=layout,
            modality=modality,
            channels=channels,
            spacing=list(spacing) if spacing else None,
            patch_size=list(roi_size),
            intensity=dict(intensity or {}),
        ),
        labels=labels.to_dict(),
        inference=InferenceSpec(
            roi_size=list(roi_size), overlap=overlap, sw_batch_size=sw_batch_size
        ),
    )
    torch.manual_seed(seed)
    return save_model_dir(directory, config, build_from_config(config))


def ct_intensity(cases_root: Path) -> dict[str, float]:
    """The CT window and statistics ``medseg train`` fits, here on the generated cases."""
    from medseg.datasets import discover
    from medseg.datasets.fingerprint import fingerprint_dataset
    from medseg.pipelines.training.plan import ct_statistics

    fingerprint = fingerprint_dataset(discover("lits", cases_root))
    return ct_statistics(fingerprint.samples[fingerprint.channels[0]]["foreground"])


def warm_export_cache(model: Path, cache_home: Path) -> str:
    """Make, under ``cache_home`` (set as XDG_CACHE_HOME for this process and the children
    it starts), the ONNX export ``medseg predict --backend auto`` runs for ``model`` where
    a runtime backend is its choice, and that runtime's check at the precision ``auto``
    picks: a one-time cost per model, kept out of timed runs.
    Returns the backend ``auto`` chose for ``model`` (``torch``, ``openvino``, ...)."""
    import torch

    from medseg.pipelines.inference import resolve_precision
    from medseg.pipelines.model_dir import open_model
    from medseg.pipelines.prediction.backends import prepare_network

    os.environ["XDG_CACHE_HOME"] = str(cache_home)
    config, network = open_model(model)
    cpu = torch.device("cpu")
    precision = resolve_precision("auto", cpu, [config])
    prepared = prepare_network(config, network, cpu, "auto", precision=precision)
    return str(getattr(prepared, "backend", "torch"))
