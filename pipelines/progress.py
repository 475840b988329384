"""Rich progress bars on a terminal's stderr; silent when not asked for or when stderr is a
file or pipe (a log gets the per-epoch lines instead)."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any


def _progress(label: str, *fields: str) -> Any:
    """A transient bar on stderr: label, bar, done/total, one text column per field, ETA."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn(label), BarColumn(), MofNCompleteColumn()]
    columns += [TextColumn(field) for field in fields]
    columns.append(TimeRemainingColumn())
    return Progress(*columns, console=Console(stderr=True), transient=True)


@contextlib.contextmanager
def epoch_progress(
    epoch: int, epochs: int, steps: int, show: bool
) -> Iterator[Callable[[float], None]]:
    """A bar for one epoch of ``steps`` iterations; yields ``advance(loss)``.

    Shows the running mean loss, iterations per second and the time left.
    """
    if not (show and sys.stderr.isatty()):
        yield lambda loss: None
        return
    total = 0.0
    started = time.perf_counter()
    fields = ("loss {task.fields[loss]:.4f}", "{task.fields[rate]:.2f} it/s")
    with _progress(f"epoch {epoch + 1}/{epochs}", *fields) as progress:
        task = progress.add_task("train", total=steps, loss=0.0, rate=0.0)

        def advance(loss: float) -> None:
            nonlocal total
            total += loss
            done = progress.tasks[0].completed + 1
            rate = done / max(time.perf_counter() - started, 1e-9)
            progress.update(task, advance=1, loss=total / done, rate=rate)

        yield advance


@contextlib.contextmanager
def task_progress(description: str, total: int, show: bool) -> Iterator[Callable[[str], None]]:
    """A bar over ``total`` items (cases); yields ``advance(name_of_item_just_done)``."""
    if not (show and sys.stderr.isatty()):
        yield lambda name: None
        return
    with _progress(description, "{task.fields[last]}") as progress:
        task = progress.add_task(description, total=total, last="")
        yield lambda name: progress.update(task, advance=1, last=name)
