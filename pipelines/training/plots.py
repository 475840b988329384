"""Plots written as PNG artifacts (matplotlib figures without pyplot: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medseg.files import write_atomic

DICE_PREFIX = "val/dice/"
# Label colours: matplotlib's cycle without the blue, red, green and grey of the other curves.
LABEL_COLOURS = ("C1", "C4", "C5", "C6", "C8", "C9")


def plot_learning_curve(
    path: Path, history: list[dict[str, Any]], title: str | None = None
) -> Path | None:
    """The learning curve of a run, after nnU-Net's progress.png, from its ``history`` rows
    (``epoch`` from 1, ``train/loss``, ``train/lr``, and where validated ``val/loss``,
    ``val/dice_mean`` and ``val/dice/<label>``).

    Top: training and validation loss (left axis), validation Dice per label and their mean
    (right axis, 0-1), the best epoch (highest mean Dice) marked. Bottom: learning rate.
    Epoch ticks are whole numbers; ``title`` (the run name) heads the figure. Returns
    ``path``, or None when ``history`` is empty.
    """
    if not history:
        return None
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(9, 7), dpi=100, layout="constrained")
    curves, rate = figure.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    epochs = [row["epoch"] for row in history]
    curves.plot(epochs, [row["train/loss"] for row in history], color="tab:blue", label="train")
    validated = [row for row in history if "val/dice_mean" in row]
    with_loss = [row for row in validated if "val/loss" in row]
    if with_loss:
        curves.plot(
            [row["epoch"] for row in with_loss],
            [row["val/loss"] for row in with_loss],
            color="tab:red",
            marker=".",
            label="validation",
        )
    curves.set_ylabel("loss")
    curves.legend(loc="upper left", title="loss", fontsize="small")
    if validated:
        _plot_dice(curves.twinx(), validated)
    rate.plot(epochs, [row.get("train/lr", float("nan")) for row in history], color="tab:gray")
    rate.set_ylabel("learning rate")
    rate.set_xlabel("epoch")
    rate.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        figure.suptitle(title)
    return write_atomic(path, lambda temporary: figure.savefig(temporary, format="png"))


def _plot_dice(axis: Any, validated: list[dict[str, Any]]) -> None:
    """Dice per label (thin, dotted), the mean (thick) and the best epoch on ``axis``."""
    epochs = [row["epoch"] for row in validated]
    labels = [key.removeprefix(DICE_PREFIX) for key in validated[0] if key.startswith(DICE_PREFIX)]
    for number, label in enumerate(labels):
        axis.plot(
            epochs,
            [row.get(DICE_PREFIX + label, float("nan")) for row in validated],
            color=LABEL_COLOURS[number % len(LABEL_COLOURS)],
            linestyle=":",
            marker=".",
            label=label,
        )
    means = [row["val/dice_mean"] for row in validated]
    axis.plot(epochs, means, color="tab:green", linewidth=2, marker="o", label="mean")
    best = max(range(len(means)), key=lambda index: (means[index], -index))
    axis.axvline(epochs[best], color="tab:green", linestyle="--", linewidth=1)
    axis.annotate(
        f"best: epoch {epochs[best]}, Dice {means[best]:.3f}",
        (epochs[best], 0.0),
        xycoords=("data", "axes fraction"),
        textcoords="offset points",
        xytext=(4, 4),
        fontsize="small",
        color="tab:green",
    )
    axis.set_ylim(0, 1)
    axis.set_ylabel("validation Dice")
    axis.legend(loc="upper right", title="validation Dice", fontsize="small")
