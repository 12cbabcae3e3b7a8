"""Matplotlib figures of a run, written off-screen."""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402


def training_accuracy(table: dict, title: str, test_accuracy: float | None = None, size=(7, 4)):
    """Batch and running training accuracy over iterations, test accuracy as a line."""
    figure, axes = plt.subplots(figsize=size)
    axes.plot(table["iteration"], table["batch_accuracy"], lw=0.6, alpha=0.35, label="batch")
    axes.plot(table["iteration"], table["running_accuracy"], lw=1.6, label="running (last epoch)")
    if test_accuracy is not None:
        axes.axhline(test_accuracy, color="k", ls="--", lw=1, label=f"test {test_accuracy:.1%}")
    axes.set(xlabel="iteration", ylabel="training accuracy", title=title, ylim=(0, 1))
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    return figure


def confusion_matrix(matrix: list[list[int]], classes: list[str], title: str,
                     xlabel: str = "predicted class", ylabel: str = "true class", size=(5.4, 4.2)):
    """A class x class count matrix as a heat map, each row shaded by its share of the row's images
    (so a class with fewer images reads like the others) and every non-zero cell labelled."""
    import numpy as np

    counts = np.asarray(matrix, dtype=float)
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    figure, axes = plt.subplots(figsize=size)
    axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(counts):
        if count:
            axes.text(j, i, f"{count:.0f}", ha="center", va="center", fontsize=6,
                      color="white" if shares[i, j] > 0.6 else "black")
    axes.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=7)
    axes.set_yticks(range(len(classes)), classes, fontsize=7)
    axes.set(xlabel=xlabel, ylabel=ylabel, title=title)
    figure.tight_layout()
    return figure


def running_accuracy_compared(metrics_files: dict[str, list], test_accuracy: dict[str, float]):
    """Several specs' running training accuracy on one plot, each the mean over its runs'
    metrics.csv files, with its mean test accuracy as a dot at the end."""
    from .metrics import read_csv

    figure, axes = plt.subplots(figsize=(7, 3.6))
    for name, files in metrics_files.items():
        curves = [read_csv(path) for path in files]
        length = min(len(c["iteration"]) for c in curves)
        x = curves[0]["iteration"][:length]
        y = [sum(c["running_accuracy"][i] for c in curves) / len(curves) for i in range(length)]
        line, = axes.plot(x, y, lw=1.5, label=f"{name}: test {test_accuracy[name]:.1%}")
        axes.plot([x[-1]], [test_accuracy[name]], marker="o", color=line.get_color())
    axes.set(xlabel="iteration", ylabel="running training accuracy", ylim=(0, 1))
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    return figure


def image_grid(cells, columns: int, width: float, row_height: float, extra_height: float = 0.0,
               fontsize: float = 7):
    """Images in a grid, row by row, `columns` a row: each cell (image, title) or (image, title,
    title colour), an image a (C, H, W) uint8 tensor. The figure is `width` inches wide and
    `row_height` a grid row (plus `extra_height`, room for a title) high. Axes are hidden, and so
    are the cells past the last image."""
    rows = max(math.ceil(len(cells) / columns), 1)
    figure, axes = plt.subplots(rows, columns, figsize=(width, rows * row_height + extra_height), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (image, title, *color) in zip(axes.flat, cells):
        ax.imshow(image.permute(1, 2, 0).cpu().numpy(), interpolation="nearest")  # matplotlib wants an array
        ax.set_title(title, fontsize=fontsize, color=color[0] if color else "black")
    return figure


def close(figure) -> None:
    """Frees a figure that is not saved (runner.artifacts.save_figure closes those it writes)."""
    plt.close(figure)
