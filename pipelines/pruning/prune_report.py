"""The result of ``medseg prune`` and its reports: ``pruning.csv``, the trade-off plot, the
console table and the MLflow record (``pipelines/pruning/prune.py`` measures and chooses)."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.files import write_atomic, write_text_atomic
from medseg.pipelines.tracking import Tracker

# Characters MLflow refuses in a metric name; label names may hold them.
_METRIC_UNSAFE = re.compile(r"[^\w\-. /]")


@dataclass
class LevelMeasurement:
    """One pruning level measured on the cases.

    ``parameters``: trainable parameters of the sub-network (heads 1..level included);
    ``flops``: floating-point operations (2 per multiply-add, ``FlopCounterMode``'s count) of
    one forward pass over one sliding window of batch 1; ``seconds_per_case``: the median
    forward time per window on the timing sample times the mean number of windows a
    prediction of a case computes (s); ``dice``: structure name -> mean
    Dice over cases (0..1); ``dice_mean``: mean of ``dice`` over structures.
    """

    level: int
    parameters: int
    flops: int
    seconds_per_case: float
    dice: dict[str, float]
    dice_mean: float


@dataclass
class PruneResult:
    """What ``prune`` measured, chose and wrote.

    ``levels``: one measurement per level, ascending; ``chosen_level``: the level selected;
    ``reference_level``: the deepest level measured, whose Dice the tolerance is taken from;
    ``device``: where and at which precision the levels ran (``"cpu fp32"``); ``repeats``:
    timed runs per level over the timing sample; ``cases``: ids of the cases measured;
    ``windows``: windows in the timing sample; ``paths``:
    ``table`` (CSV), ``plot`` (PNG) and ``model`` (the pruned model directory).
    """

    model: str
    levels: list[LevelMeasurement]
    chosen_level: int
    reference_level: int
    tolerance: float
    device: str
    repeats: int
    cases: list[str]
    windows: int = 0
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def chosen(self) -> LevelMeasurement:
        """The measurement of the chosen level."""
        return next(m for m in self.levels if m.level == self.chosen_level)

    def rows(self) -> list[dict[str, Any]]:
        """The table as ``pruning.csv`` holds it: one dict per level, columns ``level``,
        ``parameters``, ``flops``, ``seconds_per_case``, ``dice_mean``, ``dice_<label>``...,
        ``chosen`` (bool)."""
        return [
            {
                "level": m.level,
                "parameters": m.parameters,
                "flops": m.flops,
                "seconds_per_case": round(m.seconds_per_case, 6),
                "dice_mean": round(m.dice_mean, 6),
                **{f"dice_{name}": round(value, 6) for name, value in m.dice.items()},
                "chosen": m.level == self.chosen_level,
            }
            for m in self.levels
        ]


def write_table(path: Path, result: PruneResult) -> Path:
    """Write ``result.rows()`` as CSV to ``path`` (atomically) and return ``path``."""
    rows = result.rows()
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return write_text_atomic(path, buffer.getvalue())


def plot_pruning(path: Path, result: PruneResult) -> Path:
    """Mean Dice against seconds per case, one point per level labelled ``L<level>``, the
    chosen level ringed and the tolerance threshold dashed; written as a PNG to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4), dpi=100)
    times = [m.seconds_per_case for m in result.levels]
    dice = [m.dice_mean for m in result.levels]
    axis.plot(times, dice, color="tab:blue", marker="o", zorder=2)
    for measurement in result.levels:
        axis.annotate(
            f"L{measurement.level}",
            (measurement.seconds_per_case, measurement.dice_mean),
            textcoords="offset points",
            xytext=(6, -12),
        )
    chosen = result.chosen
    axis.scatter(
        [chosen.seconds_per_case],
        [chosen.dice_mean],
        s=220,
        facecolors="none",
        edgecolors="tab:red",
        linewidths=2,
        zorder=3,
        label=f"chosen: L{chosen.level}",
    )
    threshold = result.levels[-1].dice_mean - result.tolerance
    axis.axhline(
        threshold,
        color="grey",
        linestyle="--",
        linewidth=1,
        label=f"L{result.reference_level} Dice - {result.tolerance:g}",
    )
    # From zero, so the distance between points reads as the speed-up; room right for labels.
    axis.set_xlim(0, max(times) * 1.15)
    axis.set_xlabel(f"inference time per case (s, {result.device})")
    axis.set_ylabel("mean Dice")
    axis.set_title("UNet++ pruning levels")
    axis.legend(loc="best")
    figure.tight_layout()
    write_atomic(path, lambda temporary: figure.savefig(temporary, format="png"))
    plt.close(figure)
    return path


def pruning_table(result: PruneResult) -> Any:
    """A ``rich.table.Table`` of the measurements for the console, the chosen row marked."""
    from rich.table import Table

    names = list(result.levels[0].dice)
    table = Table(
        title=f"UNet++ pruning: {len(result.cases)} case(s) on {result.device}",
        caption=f"* chosen: the smallest level with Dice >= L{result.reference_level} Dice - "
        f"{result.tolerance:g}. GFLOPs: one forward over one window. s/case: median of "
        f"{result.repeats} runs over {result.windows} sample windows, per window, times the "
        "windows a case needs.",
    )
    for column in ("level", "params", "GFLOPs", "s/case", "Dice", *names):
        table.add_column(column, justify="right", no_wrap=True)
    for m in result.levels:
        chosen = m.level == result.chosen_level
        table.add_row(
            f"L{m.level}{' *' if chosen else ''}",
            f"{m.parameters:,}",
            f"{m.flops / 1e9:.3f}",
            f"{m.seconds_per_case:.3f}",
            f"{m.dice_mean:.4f}",
            *(f"{m.dice[name]:.3f}" for name in names),
            style="bold" if chosen else None,
        )
    return table


def track_pruning(
    result: PruneResult,
    tracker: Tracker | None = None,
    *,
    experiment: str = "medseg-prune",
    run_name: str | None = None,
) -> str | None:
    """Log a pruning result to MLflow and return the run id (None when tracking failed).

    Into ``tracker``'s open run when given (training's), else a new run in ``experiment``.
    Logs params ``prune.tolerance``, ``prune.levels``, ``prune.chosen_level``, the metric
    ``prune/chosen_level`` and per level (MLflow step = level) ``prune/dice_mean``,
    ``prune/dice/<label>``, ``prune/seconds_per_case``, ``prune/parameters``,
    ``prune/flops``; the CSV, the plot and the pruned model go under ``pruning/``.
    """
    if tracker is None:
        with Tracker(experiment=experiment, run_name=run_name) as own:
            _log_pruning(result, own)
        return own.run_id
    _log_pruning(result, tracker)
    return tracker.run_id if tracker.active else None


def _log_pruning(result: PruneResult, tracker: Tracker) -> None:
    tracker.log_params(
        {
            "prune.tolerance": result.tolerance,
            "prune.levels": ",".join(str(m.level) for m in result.levels),
            "prune.chosen_level": result.chosen_level,
        }
    )
    for m in result.levels:
        metrics = {
            "prune/dice_mean": m.dice_mean,
            "prune/seconds_per_case": m.seconds_per_case,
            "prune/parameters": float(m.parameters),
            "prune/flops": float(m.flops),
        }
        metrics |= {f"prune/dice/{_METRIC_UNSAFE.sub('_', n)}": v for n, v in m.dice.items()}
        tracker.log_metrics(metrics, step=m.level)
    tracker.log_metrics({"prune/chosen_level": float(result.chosen_level)}, step=0)
    for key in ("table", "plot"):
        tracker.log_artifact(result.paths[key], "pruning")
    tracker.log_artifact(result.paths["model"], "pruning/model")
