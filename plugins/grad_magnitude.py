"""Part 2 gradient magnitudes: G = max_i |dL/dw_i| over each layer's weight, every k-th step,
and with `measures` the gradient flow through every layer: mean |dL/dw| and ||g|| / ||w||.

Layers are taken in forward order (the order the model calls them, which need not be the
order it registered them): the first training forward pass records it with forward-pre hooks
that are removed right after. metrics.csv gets one column per layer, named
`G/<kind><NN> (<module path>)`, e.g. `G/conv01 (0)` for the first conv, which is module `0`
of a Sequential; NN counts the recorded layers from 1 in forward order (so with
`layers = "conv"` it is the homework's conv number) and <kind> is the layer type in lower case.

`measures` chooses what is recorded of each layer's weight gradient g (read after the backward
pass, before the optimizer step): "max" is G (the columns above), "mean" the mean |dL/dw_i| over
the weight's entries (`grad_mean/<layer>`), "ratio" the gradient-to-weight ratio ||g||_2 /
||w||_2 (`grad_ratio/<layer>`). With `layers = "all"` every module with a weight parameter is
recorded (linear and normalization layers too), so where gradients vanish or explode is one
picture: grad_flow.png, one heat map per measure (log10, layers by iterations).

Recorded iterations: 1, every multiple of `every`, and the final iteration; the others stay
empty (NaN). A layer whose weight got no gradient that step records NaN.

At the end, summary.json gets `grad_magnitude`: the column names of the first and last conv
layer ("first", "last"), their G ("first_G", "last_G") and "ratio_first_over_last" keyed "1",
"100" and "last_iteration", each taken at the nearest recorded iteration at or before it (the
one used is under "iterations"; a key past the run's end is left out; NaN or infinite values
are null). The run folder gets grad_first_last.png (both layers over iterations, log scale)
and grad_heatmap.png (log10 G, layers in forward order by recorded iterations). These need "max";
with "mean" or "ratio" measured, the summary also gets "flow": every layer's measures at the last
recorded iteration and the layers of the smallest and largest gradient-to-weight ratio.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from ignite.engine import Events
from torch import nn

from runner import Plugin, TrainEvents, hookimpl, setting
from runner.results import DASH, finite, number_text

# Each measure's column prefix; "max" is G, the homework's.
PREFIXES = {"max": "G/", "mean": "grad_mean/", "ratio": "grad_ratio/"}
MEASURES = tuple(PREFIXES)
LABELS = {"max": "max |dL/dw|", "mean": "mean |dL/dw|", "ratio": "||dL/dw|| / ||w||"}


@dataclass(frozen=True)
class Settings:
    every: int = setting(1, "record G every k-th iteration (and at iterations 1 and the last)", min=1)
    layers: str = setting("conv", "which layers: conv layers, or every module with a weight parameter",
                          choices=("conv", "all"))
    figures: bool = setting(True, "write grad_first_last.png and grad_heatmap.png (and grad_flow.png)")
    measures: list[str] = setting(["max"], "what of each layer's gradient g: max |g| (G), mean |g|, ||g|| / ||w||",
                                  choices=MEASURES, length=(1, len(MEASURES)))


plugin = Plugin(settings=Settings, help="G = max |dL/dw| of each layer over iterations (P2 Q2)")


def _is_conv(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.conv._ConvNd)


def _candidates(model: nn.Module, which: str) -> dict[nn.Module, str]:
    """Modules to watch, mapped to their path in the model ("model" for the model itself)."""
    out = {}
    for path, module in model.named_modules():
        if which == "conv" and not _is_conv(module):
            continue
        if isinstance(getattr(module, "weight", None), nn.Parameter) and module not in out:
            out[module] = path or "model"
    return out


def _kind(module: nn.Module) -> str:
    return "conv" if _is_conv(module) else type(module).__name__.lower()


def column_names(layers: list[tuple[nn.Module, str]], prefix: str = "G/") -> list[str]:
    width = max(2, len(str(len(layers))))
    return [f"{prefix}{_kind(module)}{i:0{width}d} ({path})" for i, (module, path) in enumerate(layers, 1)]


class GradMagnitude:
    """The per-run state: the layers in forward order and the column names of metrics.csv."""

    def __init__(self, model: nn.Module, metrics, settings: Settings):
        self.model, self.metrics, self.every = model, metrics, settings.every
        self.measures = [m for m in MEASURES if m in settings.measures]  # one order, whatever the spec's
        self.candidates = _candidates(model, settings.layers)
        self.called: dict[nn.Module, None] = {}  # insertion-ordered set of modules, first call first
        self.hooks: list = []
        self.layers: list[tuple[nn.Module, str]] | None = None
        self.names: list[str] = []  # G's columns ("max"), empty when it is not measured
        self.columns: dict[str, list[str]] = {}  # measure -> its columns
        self.every_column: list[str] = []  # all of them, in the order values() gives them
        self.weights: list[nn.Parameter] = []
        self.sizes: torch.Tensor | None = None  # each weight's number of entries, for "mean"

    # -- forward order -------------------------------------------------------------------
    def start_recording(self, engine=None) -> None:
        if self.layers is None and not self.hooks:
            for module in self.candidates:
                self.hooks.append(module.register_forward_pre_hook(self._called))

    def _called(self, module, args) -> None:
        self.called.setdefault(module, None)

    def stop_recording(self) -> None:
        for hook in self.hooks:
            hook.remove()
        self.hooks.clear()

    def fix_order(self) -> None:
        """Layers in the order the first forward pass called them; never-called ones after, in
        registration order (their weights get no gradient, so they record NaN)."""
        self.stop_recording()
        order = list(self.called) + [m for m in self.candidates if m not in self.called]
        self.layers = [(m, self.candidates[m]) for m in order]
        self.columns = {m: column_names(self.layers, PREFIXES[m]) for m in self.measures}
        self.names = self.columns.get("max", [])
        self.every_column = [name for measure in self.measures for name in self.columns[measure]]
        self.weights = [m.weight for m, _ in self.layers]
        if self.names:  # G of the first and last conv, drawn live by a live-plot plugin (visdom)
            self.metrics.plot("grad", list(_first_last(self)), "gradient magnitude G (first and last layer)", "G",
                              log=True)

    # -- recording -----------------------------------------------------------------------
    def due(self, engine) -> bool:
        iteration = engine.state.iteration
        last = engine.state.max_iters or (engine.state.epoch_length or 0) * (engine.state.max_epochs or 0)
        return iteration == 1 or iteration % self.every == 0 or iteration == last

    def on_backward(self, engine) -> None:
        if self.layers is None:
            self.fix_order()
        if not self.weights or not self.due(engine):
            return
        self.metrics.add_many(self.every_column, engine.state.iteration, self.values())

    def values(self) -> torch.Tensor:
        """Every measure of every layer as one tensor (measures in MEASURES order, layers in forward
        order), computed on the device without a host sync."""
        grads = [p.grad for p in self.weights]
        present = [i for i, g in enumerate(grads) if g is not None]
        if len(present) == len(grads):
            return torch.cat(self._measured(grads, list(range(len(grads)))))
        values = torch.full((len(self.measures), len(grads)), float("nan"), device=self.metrics.device)
        if present:
            values[:, present] = torch.stack(self._measured([grads[i] for i in present], present)).to(values)
        return values.reshape(-1)

    def _measured(self, grads: list[torch.Tensor], layers: list[int]) -> list[torch.Tensor]:
        """One tensor per measure, of the given layers (indices into self.weights) and their gradients."""
        weights = [self.weights[i] for i in layers]
        out = []
        for measure in self.measures:
            if measure == "max":
                out.append(torch.stack(_max_abs(grads)))
            elif measure == "mean":
                if self.sizes is None:  # made once: a tensor built from Python numbers is a host-to-device copy
                    self.sizes = torch.tensor([w.numel() for w in self.weights], dtype=torch.float32,
                                              device=self.weights[0].device)
                sizes = self.sizes if len(layers) == len(self.weights) else self.sizes[layers]
                out.append(torch.stack(_norms(grads, 1)).float() / sizes)
            else:
                out.append(torch.stack(_norms(grads, 2)).float()
                           / torch.stack(_norms([w.detach() for w in weights], 2)).float())
        return out


def _max_abs(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    # The inf-norm is max |g|; _foreach_norm computes all of them in one fused op where it can.
    try:
        return list(torch._foreach_norm(tensors, float("inf")))
    except (AttributeError, RuntimeError, TypeError):  # private API: fall back to one op per layer
        return [t.detach().abs().amax() for t in tensors]


def _norms(tensors: list[torch.Tensor], order: float) -> list[torch.Tensor]:
    """Each tensor's `order`-norm (1: the sum of |x|), in one fused op where it can."""
    try:
        return list(torch._foreach_norm(tensors, order))
    except (AttributeError, RuntimeError, TypeError):
        return [torch.linalg.vector_norm(t.detach(), order) for t in tensors]


@hookimpl
def attach(trainer, run, settings, state):
    state.grads = grads = GradMagnitude(run.model, run.metrics, settings)
    # Hooks go on at the start and off after the first backward: evaluation never pays for them.
    trainer.add_event_handler(Events.STARTED, grads.start_recording)
    trainer.add_event_handler(TrainEvents.BACKWARD_COMPLETED, grads.on_backward)
    trainer.add_event_handler(Events.COMPLETED, lambda engine: grads.stop_recording())


# ---- the end of the run ----------------------------------------------------------------

def _first_last(state: GradMagnitude) -> tuple[str, str]:
    """The first and last conv layer in forward order (any watched layer if there is no conv)."""
    convs = [name for (module, _), name in zip(state.layers, state.names) if _is_conv(module)]
    chosen = convs or state.names
    return chosen[0], chosen[-1]


def _recorded_iterations(table: dict, names: list[str]) -> list[int]:
    """Iterations where the plugin wrote a row (at least one layer's G is not NaN)."""
    return [it for it in map(int, table["iteration"]) if any(table[n][it - 1] == table[n][it - 1] for n in names)]


def summarize(table: dict, state: GradMagnitude) -> dict | None:
    """G of the first and last conv at iterations 1, 100 and the last recorded (the nearest
    recorded iteration at or before each; a checkpoint past the run's end is left out)."""
    if not state.names or state.names[0] not in table:
        return None
    first, last = _first_last(state)
    iterations = table["iteration"]
    recorded = _recorded_iterations(table, state.names)
    if not recorded:
        return None
    targets = {"1": 1, "100": 100, "last_iteration": recorded[-1]}
    out = {"first": first, "last": last, "every": state.every, "iterations": {},
           "first_G": {}, "last_G": {}, "ratio_first_over_last": {}}
    for key, target in targets.items():
        if target > iterations[-1]:
            continue
        at = max((it for it in recorded if it <= target), default=None)
        if at is None:
            continue
        g_first, g_last = table[first][at - 1], table[last][at - 1]
        out["iterations"][key] = at
        out["first_G"][key] = finite(g_first)
        out["last_G"][key] = finite(g_last)
        out["ratio_first_over_last"][key] = finite(g_first / g_last) if g_last else None
    return out


def _short(name: str) -> str:
    """'conv01 (0)' of any measure's column name."""
    return name.partition("/")[2]


def flow_summary(table: dict, state: GradMagnitude) -> dict | None:
    """Every layer's measures at the last recorded iteration, and the layers of the smallest and
    largest gradient-to-weight ratio (where gradients vanish and where they are largest)."""
    recorded = _recorded_iterations(table, [n for n in state.every_column if n in table])
    if not recorded:
        return None
    at = recorded[-1]
    layers = {_short(name): {} for name in next(iter(state.columns.values()))}
    for measure, columns in state.columns.items():
        for name in columns:
            layers[_short(name)][measure] = finite(table[name][at - 1])
    out = {"iteration": at, "measures": list(state.columns), "layers": layers}
    ratios = sorted((v["ratio"], k) for k, v in layers.items() if v.get("ratio") is not None)
    if ratios:
        out["smallest_ratio"], out["largest_ratio"] = ratios[0][1], ratios[-1][1]
    return out


@hookimpl
def run_finished(run, results, settings, state):
    grads: GradMagnitude | None = getattr(state, "grads", None)
    if grads is None or grads.layers is None:  # never trained (iterations = 0)
        results["grad_magnitude"] = None
        return
    table = run.metrics.table()
    summary = summarize(table, grads)
    flow = flow_summary(table, grads) if set(grads.measures) - {"max"} else None
    if flow is not None:
        summary = {**(summary or {}), "flow": flow}
    results["grad_magnitude"] = summary
    if summary is None or not settings.figures:
        return
    from runner import artifacts

    title = getattr(getattr(run, "spec", None), "name", "")
    drawn = []
    if grads.names:
        first, last = _first_last(grads)
        drawn += [("grad_first_last.png", lambda: first_last_figure(table, first, last, title)),
                  ("grad_heatmap.png", lambda: heatmap_figure(table, grads.names, title))]
    if flow is not None:
        drawn.append(("grad_flow.png", lambda: flow_figure(table, grads.columns, title)))
    for filename, draw in drawn:
        figure = draw()
        artifacts.save_figure(run.dir / filename, figure)


def _recorded(table: dict, name: str) -> tuple[list[int], list[float]]:
    """Recorded points of one column that a log axis can show (finite and positive)."""
    pairs = [(it, v) for it, v in zip(table["iteration"], table[name]) if math.isfinite(v) and v > 0]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def first_last_figure(table: dict, first: str, last: str, title: str = "", size=(7, 4)):
    import matplotlib.pyplot as plt

    from runner import figures  # noqa: F401  (sets the Agg backend before pyplot loads)

    figure, axes = plt.subplots(figsize=size)
    for name, label in ((first, "first conv"), (last, "last conv")):
        x, y = _recorded(table, name)
        axes.plot(x, y, lw=1.2, marker="." if len(x) < 50 else None, label=f"{label}: {name[2:]}")
    axes.set_yscale("log")
    if table["iteration"]:
        axes.set_xlim(0, max(table["iteration"]))  # where a line stops, G is exactly 0 (no log)
    axes.set(xlabel="iteration", ylabel="G = max |dL/dw|",
             title=f"Gradient magnitude of the first and last conv layer - {title}" if title else None)
    axes.grid(alpha=0.3, which="both")
    axes.legend(loc="best")
    figure.tight_layout()
    return figure


def _log_heatmap(figure, axes, table: dict, names: list[str], fontsize: float, label: str) -> None:
    """log10 of the columns `names` (rows, first at the top) by their recorded iterations."""
    import matplotlib.pyplot as plt

    # Only recorded iterations become columns, so `every` leaves no empty stripes.
    iterations = _recorded_iterations(table, names)
    log_g = [[math.log10(v) if math.isfinite(v) and v > 0 else float("nan")
              for v in (table[n][it - 1] for it in iterations)] for n in names]
    # Cell edges halfway between recorded iterations (and half a step beyond the ends).
    middles = [(a + b) / 2 for a, b in zip(iterations, iterations[1:])]
    x_edges = [iterations[0] - 0.5] + middles + [iterations[-1] + 0.5]
    y_edges = [i - 0.5 for i in range(len(names) + 1)]
    cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")  # G = 0 (no log) or no gradient
    mesh = axes.pcolormesh(x_edges, y_edges, log_g, shading="flat", cmap=cmap)
    axes.set_yticks(range(len(names)), [_short(n).split(" (")[0] for n in names], fontsize=fontsize)
    axes.invert_yaxis()  # first layer at the top, as the forward pass reads
    axes.set(ylabel="layer (forward order)")
    figure.colorbar(mesh, ax=axes, label=label)


def heatmap_figure(table: dict, names: list[str], title: str = "", width: float = 8, fontsize: float = 7):
    import matplotlib.pyplot as plt

    from runner import figures  # noqa: F401  (sets the Agg backend before pyplot loads)

    figure, axes = plt.subplots(figsize=(width, max(2.4, 0.013 * fontsize * len(names) + 1.2)))
    _log_heatmap(figure, axes, table, names, fontsize, "log10 max |dL/dw|  (grey: zero or no gradient)")
    axes.set(xlabel="iteration", title=f"log10 G per layer - {title}" if title else None)
    figure.tight_layout()
    return figure


def flow_figure(table: dict, columns: dict[str, list[str]], title: str = "", width: float = 8, fontsize: float = 7):
    """One log10 heat map per measure, stacked, layers by iterations: where gradients vanish or explode."""
    import matplotlib.pyplot as plt

    from runner import figures  # noqa: F401  (sets the Agg backend before pyplot loads)

    rows = len(next(iter(columns.values())))
    height = max(2.0, 0.013 * fontsize * rows + 1.0)
    figure, panels = plt.subplots(len(columns), 1, figsize=(width, height * len(columns)), sharex=True, squeeze=False)
    for axes, (measure, names) in zip(panels[:, 0], columns.items()):
        _log_heatmap(figure, axes, table, names, fontsize, f"log10 {LABELS[measure]}")
    panels[-1, 0].set(xlabel="iteration")
    if title:
        panels[0, 0].set_title(f"Gradient flow per layer - {title}")
    figure.tight_layout()
    return figure


# ---- the report ---------------------------------------------------------------------------


def gradients_table(runs) -> list[list[str]]:
    """A row per spec with gradients: test accuracy over its seeds, and G of the first and last
    conv at iteration 1 and their ratio at 1, 100 and the end, from its representative run."""
    from runner.report import accuracy_text

    rows = []
    for spec in runs.values():
        g = spec.representative.get("grad_magnitude")
        if "grad_magnitude" not in spec.representative:
            continue
        g = g or {}  # the plugin writes null when nothing was recorded
        cells = [(g.get(block) or {}).get(key) for block, key in (
            ("first_G", "1"), ("last_G", "1"), ("ratio_first_over_last", "1"),
            ("ratio_first_over_last", "100"), ("ratio_first_over_last", "last_iteration"))]
        mean, sd = spec.mean_sd()
        rows.append([spec.title, accuracy_text(mean, sd, len(spec.runs)) if mean is not None else DASH]
                    + [number_text(c, ".1e") for c in cells])
    return rows


def collapse_fields(spec) -> dict:
    """When a net stopped learning, for the template: `chance_at`, the first iteration whose loss
    is within 0.01 of ln(10), a uniform guess's; `zero_at`, the first iteration at which the first
    conv's G is exactly zero (no unit passes a gradient); `first_G_min`, its smallest non-zero G
    (each None where it never happened)."""
    summary = spec.representative.get("grad_magnitude") or {}
    table = spec.metrics()
    if not summary.get("first") or table is None:
        return {}
    loss, first = table["loss"], table[summary["first"]]
    chance = next((i + 1 for i, v in enumerate(loss) if abs(v - math.log(10)) < 0.01), None)
    zero = next((i + 1 for i, v in enumerate(first) if v == 0), None)
    positive = [v for v in first if math.isfinite(v) and v > 0]
    return {"chance_at": chance, "zero_at": zero, "first_G_min": min(positive) if positive else None}


def _report_figures(spec, folder) -> list:
    """A spec's G figures, drawn for the page from its representative run's metrics.csv: first and
    last conv over iterations, and every layer as a heat map."""
    from runner import artifacts
    from runner.report import Figure

    summary = spec.representative.get("grad_magnitude") or {}
    table = spec.metrics()
    if not summary.get("first") or table is None:
        return []
    names = [c for c in table if c.startswith("G/")]
    seed = spec.representative.get("seed")
    blocks = []
    if not spec.is_question:  # a study: the first and last conv only, half a page wide
        figure = first_last_figure(table, summary["first"], summary["last"], size=(3.5, 2.4))
        path = folder / f"grad_first_last_{spec.name}.png"
        artifacts.save_figure(path, figure)
        return [Figure(path, f"$G$ of the first and the last conv layer of {spec.title} (seed {seed}, log scale).",
                       0.5)]
    for file_name, figure, caption in (
            ("first_last", first_last_figure(table, summary["first"], summary["last"], size=(7, 2.4)),
             f"$G = max_i |∂L \\/ ∂w_i|$ of the first and the last conv layer of {spec.title} over iterations "
             f"(seed {seed}, log scale; where a line stops, its G is exactly zero)."),
            ("heatmap", heatmap_figure(table, names, width=7, fontsize=7),
             f"$log_10 G$ of every conv layer of {spec.title} (rows, in forward order) over iterations (seed {seed}); "
             "grey: a gradient of exactly zero.")):
        path = folder / f"grad_{file_name}_{spec.name}.png"
        artifacts.save_figure(path, figure)
        blocks.append(Figure(path, caption, 1.0))
    return blocks


def _flow_blocks(spec, folder) -> list:
    """A spec's gradient-flow heat maps (when it measured more than G) and a sentence on the spread
    of its gradient-to-weight ratios."""
    from runner import artifacts
    from runner.report import Figure, Paragraph

    flow = (spec.representative.get("grad_magnitude") or {}).get("flow")
    table = spec.metrics()
    if not flow or table is None:
        return []
    columns = {m: [c for c in table if c.startswith(PREFIXES[m])] for m in flow["measures"]}
    if not all(columns.values()):
        return []
    figure = flow_figure(table, columns, width=7, fontsize=6)
    path = folder / f"grad_flow_{spec.name}.png"
    artifacts.save_figure(path, figure)
    shown = ", ".join(LABELS[m] for m in columns)
    blocks = [Figure(path, f"Gradient flow through every layer of {spec.title} (rows, in forward order) over "
                           f"iterations (seed {spec.representative.get('seed')}), log10 of: {shown}; grey: zero.", 1.0)]
    low, high = flow.get("smallest_ratio"), flow.get("largest_ratio")
    if low and high:
        small, large = flow["layers"][low]["ratio"], flow["layers"][high]["ratio"]
        spread = large / small if small else math.inf
        verdict = ("the gradient reaches every layer in proportion to its weights" if spread < 10 else
                   f"{low} learns {spread:,.0f} times slower than {high} relative to its weights"
                   if math.isfinite(spread) else f"{low} gets no gradient at all")
        blocks.insert(0, Paragraph(
            f"At iteration {flow['iteration']} the gradient-to-weight ratio ||g|| / ||w|| of {spec.title} ranges from "
            f"{small:.1e} ({low}) to {large:.1e} ({high}): {verdict}."))
    return blocks


@hookimpl
def report_sections(runs):
    """Each spec's G figures, and one section comparing every spec's gradients."""
    from runner.report import Paragraph, Section, Table

    sections = []
    for spec in runs.values():
        blocks = _report_figures(spec, runs.workdir) + _flow_blocks(spec, runs.workdir)
        if blocks:
            sections.append(Section(spec=spec.name, blocks=blocks, fields=collapse_fields(spec)))
    rows = gradients_table(runs)
    if len(rows) > 1:
        sections.append(Section("Gradient magnitudes of every net compared", [
            Paragraph("G = max |dL/dw| over a layer's weights, read after the backward pass and before the "
                      "optimizer step; first is the first conv layer, last the classifier's. A ratio far below 1 "
                      "means the gradient vanishes on its way back to the first layer."),
            Table(["net", "test accuracy", "G first @1", "G last @1", "ratio @1", "ratio @100", "ratio @end"], rows,
                  "Gradient magnitudes (from each spec's lowest seed) and test accuracy (over its seeds).")]))
    return sections
