"""Matplotlib figures of a run, written off-screen."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402


def training_accuracy(table: dict, title: str, test_accuracy: float | None = None):
    """Batch and running training accuracy over iterations, test accuracy as a line."""
    figure, axes = plt.subplots(figsize=(7, 4))
    axes.plot(table["iteration"], table["batch_accuracy"], lw=0.6, alpha=0.35, label="batch")
    axes.plot(table["iteration"], table["running_accuracy"], lw=1.6, label="running (last epoch)")
    if test_accuracy is not None:
        axes.axhline(test_accuracy, color="k", ls="--", lw=1, label=f"test {test_accuracy:.1%}")
    axes.set(xlabel="iteration", ylabel="training accuracy", title=title, ylim=(0, 1))
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    return figure


def close(figure) -> None:
    plt.close(figure)
