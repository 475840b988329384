"""Progress of long steps (epochs, validation, cases): a rich bar in a terminal, plain lines
everywhere else.

Each step logs a line when it starts and one per item (per case, or now and then within an
epoch) with the time it took and an ETA, flagged as progress records: a terminal drawing
the bar drops them, a plain console or a log file keeps them (``pipelines/console.py``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from medseg.pipelines.console import PROGRESS, settings, terminal

logger = logging.getLogger("medseg.progress")

# Within an epoch, a plain log gets a line at most this often (seconds): a job log shows
# life during a long first epoch without a line per iteration.
EPOCH_LINE_SECONDS = 60.0


def duration(seconds: float) -> str:
    """``seconds`` as ``1.2 s``, ``3 min 04 s`` or ``2 h 05 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def progress_line(message: str, *args: Any) -> None:
    """Log ``message % args`` at INFO as a progress record (what a terminal's bar shows)."""
    logger.info(message, *args, extra={PROGRESS: True})


def _bars_shown(show: bool) -> bool:
    return show and settings().interactive


def _progress(label: str, *fields: str) -> Any:
    """A transient bar on the shared terminal: label, bar, done/total, one text column per
    field, ETA."""
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
    return Progress(*columns, console=terminal(), transient=True)


@contextlib.contextmanager
def epoch_progress(
    epoch: int, epochs: int, steps: int, show: bool
) -> Iterator[Callable[[float], None]]:
    """Progress of epoch ``epoch`` (1-based) of ``epochs``, ``steps`` iterations long;
    yields ``advance(loss)``.

    A bar shows the running mean loss, iterations per second and the time left; plain logs
    get a start line and, at most every ``EPOCH_LINE_SECONDS``, the same numbers.
    """
    total, done = 0.0, 0
    started = last_line = time.perf_counter()
    progress_line("epoch %d/%d: %d iterations", epoch, epochs, steps)
    if not _bars_shown(show):

        def log_now_and_then(loss: float) -> None:
            nonlocal total, done, last_line
            total, done = total + loss, done + 1
            now = time.perf_counter()
            if now - last_line >= EPOCH_LINE_SECONDS and done < steps:
                last_line = now
                rate = done / (now - started)
                progress_line(
                    "epoch %d/%d: %d/%d iterations, loss %.4f, %.2f it/s, epoch ETA %s",
                    epoch,
                    epochs,
                    done,
                    steps,
                    total / done,
                    rate,
                    duration((steps - done) / rate),
                )

        yield log_now_and_then
        return
    fields = ("loss {task.fields[loss]:.4f}", "{task.fields[rate]:.2f} it/s")
    with _progress(f"epoch {epoch}/{epochs}", *fields) as progress:
        task = progress.add_task("train", total=steps, loss=0.0, rate=0.0)

        def advance(loss: float) -> None:
            nonlocal total, done
            total, done = total + loss, done + 1
            rate = done / max(time.perf_counter() - started, 1e-9)
            progress.update(task, advance=1, loss=total / done, rate=rate)

        yield advance


@contextlib.contextmanager
def task_progress(description: str, total: int, show: bool) -> Iterator[Callable[[str], None]]:
    """Progress over ``total`` items (cases); yields ``advance(item)``, called once each item
    is done with its name (and outcome, e.g. ``"case_7 done"``).

    A bar shows the last item; plain logs get ``description: N`` when the step starts and
    ``description i/N item (seconds, ETA)`` per item.
    """
    started = last = time.perf_counter()
    done = 0
    progress_line("%s: %d to do", description, total)
    if not _bars_shown(show) or total == 0:

        def log_item(item: str) -> None:
            nonlocal done, last
            done += 1
            now = time.perf_counter()
            eta = (now - started) / done * (total - done)
            progress_line(
                "%s %d/%d %s (%s, ETA %s)",
                description,
                done,
                total,
                item,
                duration(now - last),
                duration(eta),
            )
            last = now

        yield log_item
        return
    with _progress(description, "{task.fields[last]}") as progress:
        task = progress.add_task(description, total=total, last="")
        yield lambda item: progress.update(task, advance=1, last=item)
