"""One logging set-up for every medseg command: in a terminal, in a batch job, in a log file.

- In a terminal (stderr is a TTY) records print through rich, and long steps draw progress
  bars (``pipelines/progress.py``) instead of their per-item lines.
- Without one (nohup, SLURM, CI, a pipe) every record is one plain line with a time stamp
  that never wraps; progress comes as lines too: each step's start, each item, each epoch
  with its duration and ETA.
- ``configure(log_file=PATH)`` writes the plain lines to PATH whatever the console shows.

Other libraries stay quiet unless ``debug``: their Python warnings are ignored and their
log records below ERROR dropped, in this process and in the workers that
``worker_initializer`` starts (evaluation's process pool).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PLAIN_FORMAT = "%(asctime)s %(levelname)-7s %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
# A record carrying this attribute (``extra={PROGRESS: True}``) repeats what a terminal's
# progress bar shows; the terminal drops it, plain consoles and log files keep it.
PROGRESS = "medseg_progress"
# Loggers that configure their own handlers, so the root handler's filter never sees them.
_SELF_HANDLED = ("mlflow",)
# What libraries read from the environment to stay quiet (set only when the user has not).
_QUIET_ENVIRONMENT = {
    "MLFLOW_LOGGING_LEVEL": "ERROR",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "TQDM_DISABLE": "1",
    # torch gives its loggers handlers of their own on import (the ONNX exporter's
    # "torchvision is not installed" lines); "-all" sets them to ERROR.
    "TORCH_LOGS": "-all",
}


@dataclass(frozen=True)
class ConsoleSettings:
    """How the console was set up: ``debug`` shows everything, ``quiet`` only warnings and
    errors, ``interactive`` draws progress bars (stderr is a terminal)."""

    debug: bool = False
    quiet: bool = False
    interactive: bool = False


_current: ConsoleSettings | None = None
_installed: list[logging.Handler] = []
_terminal: Any = None


def settings() -> ConsoleSettings:
    """The settings of the last ``configure`` call, or, before any, defaults with
    ``interactive`` telling whether stderr is a terminal."""
    return _current or ConsoleSettings(interactive=sys.stderr.isatty())


def terminal() -> Any:
    """The rich ``Console`` on stderr that log records and progress bars share (so records
    print above a live bar, never through it)."""
    global _terminal
    if _terminal is None:
        from rich.console import Console

        _terminal = Console(stderr=True)
    return _terminal


def output_console() -> Any:
    """A rich ``Console`` on stdout for results: soft-wrapped, and as wide as its content
    when stdout is not a terminal, so a table or a long path in a log is never broken."""
    from rich.console import Console

    width = None if sys.stdout.isatty() else 10_000
    return Console(soft_wrap=True, width=width)


class _Audience(logging.Filter):
    """Passes medseg's own records, other libraries' only from ERROR up (all with
    ``debug``), and drops progress records where a bar shows them."""

    def __init__(self, debug: bool, drop_progress: bool) -> None:
        super().__init__()
        self.debug, self.drop_progress = debug, drop_progress

    def filter(self, record: logging.LogRecord) -> bool:
        if self.drop_progress and getattr(record, PROGRESS, False):
            return False
        if self.debug or record.levelno >= logging.ERROR:
            return True
        return record.name == "medseg" or record.name.startswith("medseg.")


class _StderrHandler(logging.StreamHandler):
    """A plain handler writing to whatever ``sys.stderr`` is at the time of each record
    (a test's capture, or a redirected stream), not the one it was created with."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def plain_formatter() -> logging.Formatter:
    """``2026-01-31 14:02:09 INFO    message``: one line per record."""
    return logging.Formatter(PLAIN_FORMAT, DATE_FORMAT)


def configure(
    *,
    debug: bool = False,
    quiet: bool = False,
    log_file: Path | None = None,
    interactive: bool | None = None,
) -> ConsoleSettings:
    """Set up logging for a medseg command; replaces what an earlier call installed.

    ``quiet`` keeps the console to warnings and errors (the log file still gets INFO);
    ``debug`` lets every record and warning through, medseg's DEBUG lines included;
    ``interactive`` (default: whether stderr is a terminal) picks rich output and progress
    bars over plain lines. ``log_file`` is appended to in the plain form. Returns the
    settings in force.
    """
    global _current
    interactive = sys.stderr.isatty() if interactive is None else interactive
    _current = ConsoleSettings(debug=debug, quiet=quiet, interactive=interactive)
    root = logging.getLogger()
    for handler in _installed:
        root.removeHandler(handler)
        handler.close()
    _installed.clear()
    if interactive:
        from rich.logging import RichHandler

        console: logging.Handler = RichHandler(
            console=terminal(), show_path=False, log_time_format="[%X]"
        )
        console.setFormatter(logging.Formatter("%(message)s"))
    else:
        console = _StderrHandler()
        console.setFormatter(plain_formatter())
    console.setLevel(logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO)
    console.addFilter(_Audience(debug, drop_progress=interactive))
    _installed.append(console)
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        written = logging.FileHandler(log_file, encoding="utf-8")
        written.setFormatter(plain_formatter())
        written.setLevel(logging.DEBUG if debug else logging.INFO)
        written.addFilter(_Audience(debug, drop_progress=False))
        _installed.append(written)
    for handler in _installed:
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    _quiet_libraries(debug)
    return _current


def _quiet_libraries(debug: bool) -> None:
    """Third-party warnings and chatter off unless ``debug``; on with it."""
    if debug:
        logging.captureWarnings(True)
        for name in _SELF_HANDLED:
            logging.getLogger(name).setLevel(logging.DEBUG)
        return
    logging.captureWarnings(False)
    # A warning a library raises is about its own use, not the user's data: medseg reports
    # what matters to the user itself.
    warnings.simplefilter("ignore")
    for key, value in _QUIET_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    for name in _SELF_HANDLED:
        logging.getLogger(name).setLevel(logging.ERROR)


def worker_initializer(chosen: ConsoleSettings) -> None:
    """Give a worker process (``ProcessPoolExecutor(initializer=...)``) the parent's
    console settings: a spawned process starts with Python's default filters, which let
    every library warning through."""
    configure(debug=chosen.debug, quiet=chosen.quiet, interactive=False)
