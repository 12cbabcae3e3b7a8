"""Per-iteration training metrics, kept on the device and read back only when written.

metrics.csv columns: iteration, loss, batch_accuracy (this step's batch), running_accuracy
(over the last `window` steps, one epoch by default), then any column a plugin adds
(grad_magnitude adds one per layer). Missing values (a plugin logging every k-th step) are empty.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LivePlot:
    """A live window: metrics columns drawn as lines over iterations."""

    window: str
    columns: list[str]
    title: str
    ylabel: str
    log: bool = False


class MetricsLog:
    def __init__(self, iterations: int, device, window: int = 100):
        self.iterations, self.device, self.window = iterations, device, window
        self.loss = torch.full((iterations,), float("nan"), device=device)
        self.correct = torch.zeros(iterations, device=device)
        self.count = torch.zeros(iterations, device=device)
        self.columns: dict[str | tuple[str, ...], torch.Tensor] = {}  # add: one name; add_many: a block of names
        self.plots: dict[str, LivePlot] = {}  # windows of plugin columns drawn live (plot())
        self.done = 0  # iterations recorded so far
        self.started = 0.0  # perf_counter at the start of this process's training
        self.seconds_before_resume = 0.0  # training seconds spent before a resume

    def state_dict(self) -> dict:
        return {"loss": self.loss, "correct": self.correct, "count": self.count, "done": self.done,
                "columns": dict(self.columns)}

    def load_state_dict(self, state: dict) -> None:
        self.loss, self.correct, self.count = state["loss"], state["correct"], state["count"]
        self.done, self.columns = state["done"], dict(state["columns"])

    def record(self, iteration: int, loss: torch.Tensor, correct: torch.Tensor, count: int) -> None:
        """Store one step's results (iteration counts from 1, as Ignite's does)."""
        i = iteration - 1
        self.loss[i] = loss
        self.correct[i] = correct
        self.count[i] = count
        self.done = max(self.done, iteration)

    def add(self, name: str, iteration: int, value: torch.Tensor | float) -> None:
        """A plugin's value for one step, in its own column."""
        column = self.columns.get(name)
        if column is None:
            column = self.columns[name] = torch.full((self.iterations,), float("nan"), device=self.device)
        column[iteration - 1] = value

    def add_many(self, names: list[str], iteration: int, values: torch.Tensor) -> None:
        """Several columns at once from one stacked tensor: one device op, not one per column."""
        key = tuple(names)
        block = self.columns.get(key)
        if block is None:
            block = self.columns[key] = torch.full((self.iterations, len(names)), float("nan"), device=self.device)
        block[iteration - 1] = values

    def plot(self, window: str, columns: list[str], title: str = "", ylabel: str = "", log: bool = False) -> None:
        """Declare that these columns are drawn together, live, in one window (a live-plot plugin
        such as visdom reads `plots`; without one this costs nothing). Declaring a window again
        replaces it."""
        self.plots[window] = LivePlot(window, list(columns), title or window, ylabel, log)

    def column(self, name: str) -> torch.Tensor | None:
        """One column's values (NaN where not recorded), wherever add or add_many put it."""
        if name in self.columns:
            return self.columns[name]
        for key, block in self.columns.items():
            if isinstance(key, tuple) and name in key:
                return block[:, key.index(name)]
        return None

    def running_accuracy(self) -> torch.Tensor:
        correct = torch.cumsum(self.correct.double(), 0)
        count = torch.cumsum(self.count.double(), 0)
        shifted = lambda t: (torch.cat([t.new_zeros(self.window), t[:-self.window]]) if len(t) > self.window
                             else t.new_zeros(len(t)))
        return ((correct - shifted(correct)) / (count - shifted(count)).clamp(min=1)).float()

    def table(self) -> dict[str, list[float]]:
        """All columns as Python lists for the recorded iterations: one host transfer."""
        n = self.done
        out = {
            "iteration": list(range(1, n + 1)),
            "loss": self.loss[:n].tolist(),
            "batch_accuracy": (self.correct[:n] / self.count[:n].clamp(min=1)).tolist(),
            "running_accuracy": self.running_accuracy()[:n].tolist(),
        }
        for key, column in self.columns.items():
            if isinstance(key, tuple):
                for j, name in enumerate(key):
                    out[name] = column[:n, j].tolist()
            else:
                out[key] = column[:n].tolist()
        return out

    def row(self, iteration: int) -> dict[str, float]:
        """One iteration's values by metrics.csv column, as table() has them (NaN where a column has
        none): one host transfer, for a tracker logging the latest row while the run trains."""
        i = iteration - 1
        names = ["loss", "batch_accuracy", "running_accuracy"]
        values = [self.loss[i], self.correct[i] / self.count[i].clamp(min=1), self.running_accuracy()[i]]
        for key, column in self.columns.items():
            names += list(key) if isinstance(key, tuple) else [key]
            values.append(column[i])
        return dict(zip(names, torch.cat([v.float().reshape(-1) for v in values]).tolist()))

    def latest(self, iteration: int) -> tuple[float, float]:
        """Loss and running accuracy at an iteration in one host transfer: what the progress display
        and the divergence check read every log_every steps (a GPU waits for its queue at each read)."""
        i = iteration - 1
        loss, accuracy = self.loss[i], self.running_accuracy()[i]
        if loss.device.type == "cpu":  # no transfer to save: two reads cost less than a stack
            return float(loss), float(accuracy)
        return tuple(torch.stack([loss, accuracy]).tolist())  # both fp32: the same floats

    def table_value(self, name: str, iteration: int) -> float:
        if name == "loss":
            return float(self.loss[iteration - 1])
        if name == "running_accuracy":
            return float(self.running_accuracy()[iteration - 1])
        raise KeyError(name)

    def to_csv(self) -> str:
        table = self.table()
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(list(table))
        for row in zip(*table.values()):
            writer.writerow([_format(v) for v in row])
        return buffer.getvalue()


def _format(value) -> str:
    if isinstance(value, float):
        return "" if value != value else f"{value:.6g}"
    return str(value)


def read_csv(path) -> dict[str, list[float]]:
    """metrics.csv back as columns of floats (NaN where empty)."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    return {name: [float(r[j]) if r[j] else float("nan") for r in body] for j, name in enumerate(header)}


def per_class(confusion: list[list[int]] | None, class_names: list[str]) -> dict | None:
    """Per-class test results from a confusion matrix (rows: true class, columns: predicted):
    each class's accuracy (recall: its images classified as it) and the matrix itself, as
    summary.json keeps them. None when nothing was evaluated."""
    if not confusion:
        return None
    totals = [sum(row) for row in confusion]
    return {"classes": list(class_names),
            "accuracy": [round(row[i] / total, 5) if total else None
                         for i, (row, total) in enumerate(zip(confusion, totals))],
            "confusion_matrix": [[int(v) for v in row] for row in confusion]}
