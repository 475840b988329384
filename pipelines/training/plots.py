"""Plots written as PNG artifacts (matplotlib's Agg backend, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medseg.files import write_atomic


def plot_learning_curve(path: Path, history: list[dict[str, Any]]) -> Path | None:
    """Training loss and validation Dice per epoch, from the training ``history`` rows.

    Returns ``path``, or None when ``history`` is empty.
    """
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, loss_axis = plt.subplots(figsize=(7, 4), dpi=100)
    epochs = [row["epoch"] + 1 for row in history]
    loss_axis.plot(
        epochs, [row["train/loss"] for row in history], color="tab:blue", label="train loss"
    )
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("training loss", color="tab:blue")
    validated = [row for row in history if "val/dice_mean" in row]
    if validated:
        dice_axis = loss_axis.twinx()
        dice_axis.plot(
            [row["epoch"] + 1 for row in validated],
            [row["val/dice_mean"] for row in validated],
            color="tab:red",
            marker="o",
            label="validation Dice",
        )
        dice_axis.set_ylabel("mean validation Dice", color="tab:red")
        dice_axis.set_ylim(0, 1)
    figure.tight_layout()
    write_atomic(path, lambda temporary: figure.savefig(temporary, format="png"))
    plt.close(figure)
    return path
