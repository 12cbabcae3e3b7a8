"""Layer statistics: how each layer's activations and weights behave over training.

Every `every` iterations (and at iteration 1 and the last), for each activation layer (every
nn.ReLU module, and every residual block of runner.blocks, whose output is the signal the skips
carry on), metrics.csv gets:
- `layer_stats/<layer>/mean` and `/std`: mean and standard deviation of the layer's outputs over
  the whole batch (every image, unit and position);
- `/dead_relu`: the fraction of its units that output zero for every image of the batch (a unit
  is a channel of a conv feature map, a feature of a linear layer's output);
- `/zero_frac`: the fraction of its outputs that are exactly zero;
and for each layer with a weight parameter (conv, linear, normalization) `/update_ratio`:
||w_after - w_before|| / ||w_before|| of that step's optimizer update.

Layers are named `<kind><NN>` (relu01, block03, conv02, linear01), numbered per kind in the
order the first recorded forward pass finishes them; summary.json maps each name to its module
path. The forward hooks exist only during recorded iterations (registered as one starts, removed
after its backward pass, where the weights are copied), so other steps and evaluation pay
nothing. Values stay on the device until the run's end. A module called twice in one forward
records its last call. With `train.compile`, adding and removing hooks may make torch.compile
recompile at recorded iterations.

summary.json gets `layer_stats`: each layer's numbers at the last recorded iteration, and where
the signal dies: the first layer on the signal's path (not inside a residual block's branch)
whose activation std is below `threshold`, then and at the first recorded iteration where that
happened. The run folder gets layer_stats_heatmap.png (dead fraction and log10 std, layers by
iterations) and layer_stats_update_ratio.png. No live plot: the live-plot plugin shows images
from other plugins, not their lines.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import torch
from ignite.engine import Events
from torch import nn

from runner import Plugin, TrainEvents, hookimpl, setting
from runner.blocks import Residual
from runner.results import DASH, finite, number_text, percent

PREFIX = "layer_stats/"
ACTIVATION_STATS = ("mean", "std", "dead_relu", "zero_frac")
UPDATE_STAT = "update_ratio"


@dataclass(frozen=True)
class Settings:
    every: int = setting(50, "record every k-th iteration (and at iterations 1 and the last)", min=1, quick=4)
    threshold: float = setting(1e-3, "activation std below which a layer's signal counts as dead", min=0.0)
    figures: bool = setting(True, "write layer_stats_heatmap.png and layer_stats_update_ratio.png")


plugin = Plugin(settings=Settings, help="activation mean/std, dead ReLU units and update/weight ratio per layer")


def column(layer: str, stat: str) -> str:
    return f"{PREFIX}{layer}/{stat}"


def _activation_kind(module: nn.Module) -> str | None:
    if isinstance(module, nn.ReLU):
        return "relu"
    if isinstance(module, Residual):
        return "block"
    return None


def _weight_kind(module: nn.Module) -> str | None:
    if not isinstance(getattr(module, "weight", None), nn.Parameter):
        return None
    return "conv" if isinstance(module, nn.modules.conv._ConvNd) else type(module).__name__.lower()


def activation_stats(output: torch.Tensor) -> torch.Tensor:
    """[mean, std, dead unit fraction, zero fraction] of one layer's output, on its device.

    Units are dimension 1 (channels of N, C, H, W; features of N, F); a unit is dead when it is
    zero for every image and position of the batch."""
    x = output.detach().float()
    std, mean = torch.std_mean(x)
    others = [d for d in range(x.dim()) if d != 1] if x.dim() > 1 else [0]
    alive = x.abs().amax(dim=others) if x.dim() > 1 else x.abs()
    dead = (alive == 0).float().mean()
    zero = (x == 0).float().mean()
    return torch.stack([mean, std, dead, zero])


def _norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    # _foreach_norm computes every 2-norm in one fused op where it can.
    try:
        return torch.stack(list(torch._foreach_norm(tensors)))
    except (AttributeError, RuntimeError, TypeError):  # private API: one op per tensor
        return torch.stack([t.norm() for t in tensors])


def update_ratios(after: list[torch.Tensor], before: list[torch.Tensor]) -> torch.Tensor:
    """||after - before|| / ||before|| of each weight, as one tensor on the device."""
    try:
        moved = torch._foreach_sub(after, before)
    except (AttributeError, RuntimeError, TypeError):
        moved = [a - b for a, b in zip(after, before)]
    return _norms(moved) / _norms(before)


class LayerStats:
    """The per-run state: watched modules, their names in forward order, and the hooks of the
    iteration being recorded."""

    def __init__(self, model: nn.Module, metrics, every: int):
        self.metrics, self.every = metrics, every
        self.activations: dict[nn.Module, str] = {}  # module -> its path in the model
        self.weighted: dict[nn.Module, str] = {}
        for path, module in model.named_modules():
            if _activation_kind(module) and module not in self.activations:
                self.activations[module] = path or "model"
            if _weight_kind(module) and module not in self.weighted:
                self.weighted[module] = path or "model"
        self.hooks: list = []
        self.outputs: dict[nn.Module, torch.Tensor] = {}  # this iteration's stats, by module
        self.finished: dict[nn.Module, None] = {}  # modules in the order the first forward finished them
        self.order: list[tuple[str, nn.Module]] | None = None  # (name, module) of activation layers
        self.weights: list[tuple[str, nn.Parameter]] = []
        self.recording = False  # this iteration is one to record
        self.before: list[torch.Tensor] | None = None
        self.names: list[str] = []
        self.paths: dict[str, str] = {}  # layer name -> module path
        self.branch: set[str] = set()  # activation layers inside a residual block's branch

    def due(self, engine) -> bool:
        iteration = engine.state.iteration
        last = engine.state.max_iters or (engine.state.epoch_length or 0) * (engine.state.max_epochs or 0)
        return iteration == 1 or iteration % self.every == 0 or iteration == last

    # -- one recorded iteration: hooks on, forward, hooks off and weights copied, step, row ----
    def start(self, engine) -> None:
        self.recording = self.due(engine)
        if not self.recording:
            return
        self.outputs.clear()
        for module in self.activations:
            self.hooks.append(module.register_forward_hook(self._record))

    def _record(self, module, args, output) -> None:
        self.outputs[module] = activation_stats(output)
        if self.order is None:
            self.finished.setdefault(module, None)

    def after_backward(self, engine) -> None:
        if not self.recording:
            return
        self.stop()
        if self.order is None:
            self.fix_order()
        self.before = [w.detach().clone() for _, w in self.weights]

    def fix_order(self) -> None:
        """Activation layers in the order the forward pass finished them (never-called ones after),
        weighted layers in registration order; each kind numbered from 1."""
        modules = list(self.finished) + [m for m in self.activations if m not in self.finished]
        counts: dict[str, int] = {}

        def name_of(kind: str) -> str:
            counts[kind] = counts.get(kind, 0) + 1
            return f"{kind}{counts[kind]:02d}"

        self.order = [(name_of(_activation_kind(m)), m) for m in modules]
        self.weights = [(name_of(_weight_kind(m)), m.weight) for m in self.weighted]
        self.paths = {name: self.activations[m] for name, m in self.order}
        self.paths.update({name: self.weighted[m] for (name, _), m in zip(self.weights, self.weighted)})
        blocks = [m for m in self.activations if isinstance(m, Residual)]
        inside = {inner for block in blocks for inner in block.modules() if inner is not block}
        self.branch = {name for name, m in self.order if m in inside}
        self.names = [column(name, stat) for name, _ in self.order for stat in ACTIVATION_STATS]
        self.names += [column(name, UPDATE_STAT) for name, _ in self.weights]
        # Live windows (visdom), one line per layer: where units die, where the signal shrinks.
        self.metrics.plot("dead ReLU", [column(name, "dead_relu") for name, _ in self.order],
                          "fraction of dead ReLU units, by layer", "dead fraction")
        self.metrics.plot("activation std", [column(name, "std") for name, _ in self.order],
                          "activation std, by layer", "std", log=True)
        self.metrics.plot("update ratio", [column(name, UPDATE_STAT) for name, _ in self.weights],
                          "update-to-weight norm ratio, by layer", "||dw|| / ||w||", log=True)

    def write(self, engine) -> None:
        if self.before is None:
            return
        nan = torch.full((len(ACTIVATION_STATS),), float("nan"), device=self.metrics.device)
        parts = [self.outputs.get(m, nan).to(nan) for _, m in self.order]
        if self.weights:
            parts.append(update_ratios([w.detach() for _, w in self.weights], self.before).to(nan))
        self.metrics.add_many(self.names, engine.state.iteration, torch.cat([p.reshape(-1) for p in parts]))
        self.before, self.recording = None, False
        self.outputs.clear()

    def stop(self, engine=None) -> None:
        for hook in self.hooks:
            hook.remove()
        self.hooks.clear()


@hookimpl
def attach(trainer, run, settings, state):
    state.stats = stats = LayerStats(run.model, run.metrics, settings.every)
    trainer.add_event_handler(Events.ITERATION_STARTED, stats.start)
    trainer.add_event_handler(TrainEvents.BACKWARD_COMPLETED, stats.after_backward)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, stats.write)
    trainer.add_event_handler(Events.COMPLETED, stats.stop)


# ---- the end of the run ----------------------------------------------------------------

def recorded_iterations(table: dict, names: list[str]) -> list[int]:
    """Iterations where the plugin wrote a row (some column of it is not NaN)."""
    return [it for it in map(int, table["iteration"])
            if any(not math.isnan(table[n][it - 1]) for n in names if n in table)]


def summarize(table: dict, stats: LayerStats, threshold: float) -> dict | None:
    """Each layer at the last recorded iteration, and where (and since when) the signal is dead."""
    recorded = recorded_iterations(table, stats.names)
    if not recorded:
        return None
    at = recorded[-1]
    value = lambda layer, stat, it=at: finite(table[column(layer, stat)][it - 1])
    layers = {}
    for name, _ in stats.order:
        layers[name] = {"module": stats.paths[name], "branch": name in stats.branch,
                        **{stat: value(name, stat) for stat in ACTIVATION_STATS}}
    for name, _ in stats.weights:
        layers[name] = {"module": stats.paths[name], UPDATE_STAT: value(name, UPDATE_STAT)}
    path = [name for name, _ in stats.order if name not in stats.branch]

    def dead_at(it: int) -> str | None:
        stds = [(name, table[column(name, "std")][it - 1]) for name in path]
        return next((name for name, std in stds if not math.isnan(std) and std < threshold), None)

    dies = dead_at(at)
    first = next(((it, dead_at(it)) for it in recorded if dead_at(it)), (None, None))
    return {"every": stats.every, "threshold": threshold, "iteration": at, "path": path, "layers": layers,
            "signal_dies_at": dies, "signal_dies_std": value(dies, "std") if dies else None,
            "first_death": {"iteration": first[0], "layer": first[1]} if first[0] else None}


@hookimpl
def run_finished(run, results, settings, state):
    stats: LayerStats | None = getattr(state, "stats", None)
    if stats is None or stats.order is None:  # never trained (iterations = 0)
        results["layer_stats"] = None
        return
    table = run.metrics.table()
    summary = summarize(table, stats, settings.threshold)
    results["layer_stats"] = summary
    if summary is None or not settings.figures:
        return
    from runner import artifacts

    title = getattr(getattr(run, "spec", None), "name", "")
    activation_layers = [name for name, _ in stats.order]
    weighted_layers = [name for name, _ in stats.weights]
    for filename, figure in (("layer_stats_heatmap.png", heatmap_figure(table, activation_layers, title)),
                             ("layer_stats_update_ratio.png", update_ratio_figure(table, weighted_layers, title))):
        artifacts.save_figure(run.dir / filename, figure)


# ---- figures ----------------------------------------------------------------------------

def _grid(table: dict, layers: list[str], stat: str, iterations: list[int], transform=lambda v: v) -> list[list[float]]:
    return [[transform(v) if math.isfinite(v) else float("nan")
             for v in (table[column(layer, stat)][it - 1] for it in iterations)] for layer in layers]


def _log10(value: float) -> float:
    return math.log10(value) if value > 0 else float("nan")


def heatmap_figure(table: dict, layers: list[str], title: str = "", width: float = 8, fontsize: float = 7):
    """Two heat maps, layers (forward order, top down) by recorded iterations: the fraction of dead
    units, and log10 of the activation std."""
    from runner.figures import plt

    names = [column(layer, stat) for layer in layers for stat in ACTIVATION_STATS]
    iterations = recorded_iterations(table, names)
    middles = [(a + b) / 2 for a, b in zip(iterations, iterations[1:])]
    step = (iterations[1] - iterations[0]) / 2 if len(iterations) > 1 else 0.5
    x_edges = [iterations[0] - step] + middles + [iterations[-1] + step]
    y_edges = [i - 0.5 for i in range(len(layers) + 1)]
    height = max(2.0, 0.013 * fontsize * len(layers) + 1.0)
    figure, (dead_axes, std_axes) = plt.subplots(2, 1, figsize=(width, 2 * height), sharex=True)
    panels = ((dead_axes, _grid(table, layers, "dead_relu", iterations), "magma_r", dict(vmin=0, vmax=1),
               "fraction of dead units"),
              (std_axes, _grid(table, layers, "std", iterations, _log10), "viridis", {},
               "log10 activation std  (grey: zero)"))
    for axes, values, cmap, limits, label in panels:
        mesh = axes.pcolormesh(x_edges, y_edges, values, shading="flat",
                               cmap=plt.get_cmap(cmap).with_extremes(bad="lightgrey"), **limits)
        axes.set_yticks(range(len(layers)), layers, fontsize=fontsize)
        axes.invert_yaxis()
        axes.set(ylabel="layer (forward order)")
        figure.colorbar(mesh, ax=axes, label=label)
    std_axes.set(xlabel="iteration")
    if title:
        dead_axes.set_title(f"Dead units and activation std per layer - {title}")
    figure.tight_layout()
    return figure


def update_ratio_figure(table: dict, layers: list[str], title: str = "", size=(8, 4)):
    """Each weighted layer's update-to-weight ratio over the recorded iterations (log scale),
    coloured by depth."""
    from runner.figures import plt

    figure, axes = plt.subplots(figsize=size)
    colours = plt.get_cmap("viridis")
    for k, layer in enumerate(layers):
        points = [(it, v) for it, v in zip(table["iteration"], table[column(layer, UPDATE_STAT)])
                  if math.isfinite(v) and v > 0]
        if points:
            axes.plot(*zip(*points), lw=1, marker="." if len(points) < 50 else None,
                      color=colours(k / max(1, len(layers) - 1)), label=layer)
    axes.set_yscale("log")
    axes.set(xlabel="iteration", ylabel="||w after - w before|| / ||w before||",
             title=f"Update-to-weight ratio per layer - {title}" if title else None)
    axes.grid(alpha=0.3, which="both")
    if layers:
        axes.legend(fontsize=6, ncol=max(1, math.ceil(len(layers) / 12)), loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.tight_layout()
    return figure


# ---- the report ---------------------------------------------------------------------------


def facts(summary: dict) -> dict:
    """The numbers a report's sentences and table are chosen by, from one run's summary."""
    layers = summary["layers"]
    path = [name for name in summary["path"] if layers[name].get("std") is not None]
    relus = [name for name in layers if name.startswith("relu") and layers[name].get("dead_relu") is not None]
    branch = [name for name in relus if layers[name].get("branch")]
    ratios = sorted((layers[n][UPDATE_STAT], n) for n in layers if layers[n].get(UPDATE_STAT) is not None)
    # The first layer of the lowest std and of the most dead units, in forward order.
    lowest_at = min(path, key=lambda n: layers[n]["std"], default=None)
    most_dead_at = max(relus, key=lambda n: layers[n]["dead_relu"], default=None)
    return {
        "iteration": summary["iteration"], "threshold": summary["threshold"],
        "path_layers": len(summary["path"]), "dies_at": summary.get("signal_dies_at"),
        "dies_index": summary["path"].index(summary["signal_dies_at"]) + 1 if summary.get("signal_dies_at") else None,
        "dies_std": summary.get("signal_dies_std"), "first_death": summary.get("first_death"),
        "lowest_std": layers[lowest_at]["std"] if lowest_at else None, "lowest_std_at": lowest_at,
        "dead_mean": statistics.mean(layers[n]["dead_relu"] for n in relus) if relus else None,
        "most_dead": layers[most_dead_at]["dead_relu"] if most_dead_at else None, "most_dead_at": most_dead_at,
        "branch_relus": len(branch), "branch_half_dead": sum(layers[n]["dead_relu"] > 0.5 for n in branch),
        "branch_most_dead": max((layers[n]["dead_relu"] for n in branch), default=None),
        "update_median": statistics.median(r for r, _ in ratios) if ratios else None,
        "update_min": ratios[0] if ratios else (None, None), "update_max": ratios[-1] if ratios else (None, None),
    }


def describe(title: str, f: dict) -> str:
    """Sentences about one net, their wording chosen by its numbers."""
    at = f"at iteration {f['iteration']}"
    if f["dies_at"]:
        text = (f"In {title} the signal dies at {f['dies_at']}, layer {f['dies_index']} of the {f['path_layers']} "
                f"on its path: {at} its activation std is {number_text(f['dies_std'], '.1e')}, "
                f"below {f['threshold']:g}")
        first = f["first_death"]
        text += (f", as it has been since iteration {first['iteration']} (then at {first['layer']})."
                 if first and first["iteration"] < f["iteration"] else ".")
    elif f["lowest_std"] is not None:
        text = (f"In {title} the signal stays alive through all {f['path_layers']} layers of its path: {at} the "
                f"lowest activation std is {f['lowest_std']:.2g} (at {f['lowest_std_at']}), above {f['threshold']:g}.")
        first = f["first_death"]
        if first:
            text += f" It had fallen below at iteration {first['iteration']} (at {first['layer']}) and recovered."
    else:
        return f"{title} recorded no activations."
    if f["dead_mean"] is not None:
        share = f["most_dead"]
        text += (f" Its ReLU layers have {f['dead_mean']:.0%} of their units dead on average; "
                 + ("none has a dead unit." if not share else f"the most, {share:.0%}, at {f['most_dead_at']}."))
    if f["branch_relus"]:
        half = f["branch_half_dead"]
        text += (f" Inside the residual branches {half} of {f['branch_relus']} ReLU layers have more than half of "
                 f"their units dead (up to {f['branch_most_dead']:.0%}); the identity path carries the signal "
                 "past them."
                 if half else f" Inside the residual branches no ReLU layer has more than half of its units dead "
                              f"(at most {f['branch_most_dead']:.0%}).")
    median = f["update_median"]
    if median is not None:
        pace = ("the weights barely move" if median < 1e-4 else "large steps beside the weights" if median > 1e-2
                else "near the 1e-3 often taken as healthy")
        text += (f" One optimizer step changes a layer's weights by {median:.1e} of their norm (median; "
                 f"{f['update_min'][0]:.1e} at {f['update_min'][1]} to {f['update_max'][0]:.1e} at "
                 f"{f['update_max'][1]}): {pace}.")
    return text


def compare(named: list[tuple[str, dict]]) -> str:
    """A closing sentence when one net loses its signal and another keeps it."""
    dying = [(t, f) for t, f in named if f["dies_at"]]
    alive = [(t, f) for t, f in named if not f["dies_at"] and f["lowest_std"] is not None]
    if dying and alive:
        (dead_title, dead), (live_title, live) = dying[0], alive[0]
        return (f"Where {dead_title} loses its signal at {dead['dies_at']}, {live_title} keeps every layer of its "
                f"path alive (lowest std {live['lowest_std']:.2g} against {number_text(dead['dies_std'], '.1e')}).")
    if dying:
        return "Every net compared here loses its signal somewhere on its path."
    return "Every net compared here keeps its signal alive through its whole path." if alive else ""


def _spec_figure(spec, summary: dict, folder):
    from runner import artifacts
    from runner.report import Figure

    table = spec.metrics()
    if table is None:
        return None
    layers = [name for name in summary["layers"] if column(name, "std") in table]
    if not layers:
        return None
    figure = heatmap_figure(table, layers, width=7, fontsize=6)
    path = folder / f"layer_stats_{spec.name}.png"
    artifacts.save_figure(path, figure)
    return Figure(path, f"Fraction of dead units (top) and log10 activation std (bottom) of every activation layer of "
                        f"{spec.title} (rows, in forward order) over iterations "
                        f"(seed {spec.representative.get('seed')}).",
                  1.0)


@hookimpl
def report_sections(runs, specs):
    """Each spec's heat maps, and one section comparing the specs side by side in a table and in
    sentences chosen by their numbers (a single spec gets its sentences in its own section)."""
    from runner.report import Paragraph, Section, Table, accuracy_text

    sections, named, rows = [], [], []
    for spec in specs:
        summary = spec.representative.get("layer_stats")
        if not summary:
            continue
        f = facts(summary)
        named.append((spec.title, f))
        figure = _spec_figure(spec, summary, runs.workdir)
        sections.append(Section(spec=spec.name, blocks=[figure] if figure else [], fields={
            "signal_dies_at": f["dies_at"], "dead_mean": f["dead_mean"], "lowest_std": f["lowest_std"],
            "update_median": f["update_median"], "text": describe(spec.title, f)}))
        mean, sd = spec.mean_sd()
        rows.append([spec.title, accuracy_text(mean, sd, len(spec.runs)) if mean is not None else DASH,
                     str(f["iteration"]),
                     f"{f['dies_at']} ({number_text(f['dies_std'], '.1e')})" if f["dies_at"] else "alive",
                     f"{number_text(f['lowest_std'], '.1e')} ({f['lowest_std_at']})", percent(f["dead_mean"], 0),
                     f"{percent(f['most_dead'], 0)} ({f['most_dead_at']})", number_text(f["update_median"], ".1e")])
    if len(rows) == 1:
        sections[0].blocks.insert(0, Paragraph(sections[0].fields["text"]))
    elif rows:
        sections.append(Section("Layer statistics compared: where the signal dies", [
            Paragraph("For each net, at its last recorded iteration: the first layer on the signal's path (residual "
                      "branches left out) whose activation std is below the threshold, the lowest std on the path, "
                      "the fraction of ReLU units that output zero for a whole batch (mean over layers, and the most), "
                      "and the median over layers of one step's ||Δw|| / ||w||."),
            Table(["net", "test accuracy", "iteration", "signal dies at (std)", "lowest std (layer)", "dead units",
                   "most dead (layer)", "update ratio"], rows,
                  "Layer statistics (from each spec's lowest seed) and test accuracy (over its seeds).", small=True),
            *[Paragraph(describe(t, f)) for t, f in named],
            *([Paragraph(compare(named))] if compare(named) else [])]))
    return sections
