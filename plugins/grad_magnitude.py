"""Part 2 gradient magnitudes: G = max_i |dL/dw_i| over each layer's weight, every k-th step.

Layers are taken in forward order (the order the model calls them, which need not be the
order it registered them): the first training forward pass records it with forward-pre hooks
that are removed right after. metrics.csv gets one column per layer, named
`G/<kind><NN> (<module path>)`, e.g. `G/conv01 (0)` for the first conv, which is module `0`
of a Sequential; NN counts the recorded layers from 1 in forward order (so with
`layers = "conv"` it is the homework's conv number) and <kind> is the layer type in lower case.

Recorded iterations: 1, every multiple of `every`, and the final iteration; the others stay
empty (NaN). A layer whose weight got no gradient that step records NaN.

At the end, summary.json gets `grad_magnitude`: the column names of the first and last conv
layer ("first", "last"), their G ("first_G", "last_G") and "ratio_first_over_last" keyed "1",
"100" and "last_iteration", each taken at the nearest recorded iteration at or before it (the
one used is under "iterations"; a key past the run's end is left out; NaN or infinite values
are null). The run folder gets grad_first_last.png (both layers over iterations, log scale)
and grad_heatmap.png (log10 G, layers in forward order by recorded iterations).
"""
from __future__ import annotations

import math

import torch
from ignite.engine import Events
from torch import nn

from runner import Setting, TrainEvents, hookimpl

SETTINGS = {
    "every": Setting(1, "record G every k-th iteration (and at iterations 1 and the last)", min=1),
    "layers": Setting("conv", "which layers: conv layers, or every module with a weight parameter",
                      choices=("conv", "all")),
    "figures": Setting(True, "write grad_first_last.png and grad_heatmap.png"),
}


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


def column_names(layers: list[tuple[nn.Module, str]]) -> list[str]:
    width = max(2, len(str(len(layers))))
    return [f"G/{_kind(module)}{i:0{width}d} ({path})" for i, (module, path) in enumerate(layers, 1)]


class GradMagnitude:
    """The per-run state: the layers in forward order and the column names of metrics.csv."""

    def __init__(self, model: nn.Module, metrics, settings: dict):
        self.model, self.metrics, self.every = model, metrics, settings["every"]
        self.candidates = _candidates(model, settings["layers"])
        self.called: dict[nn.Module, None] = {}  # insertion-ordered set of modules, first call first
        self.hooks: list = []
        self.layers: list[tuple[nn.Module, str]] | None = None
        self.names: list[str] = []
        self.weights: list[nn.Parameter] = []

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
        self.names = column_names(self.layers)
        self.weights = [m.weight for m, _ in self.layers]

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
        self.metrics.add_many(self.names, engine.state.iteration, self.values())

    def values(self) -> torch.Tensor:
        """All layers' G as one tensor, computed on the device without a host sync."""
        grads = [p.grad for p in self.weights]
        present = [i for i, g in enumerate(grads) if g is not None]
        if len(present) == len(grads):
            return torch.stack(_max_abs(grads))
        values = torch.full((len(grads),), float("nan"), device=self.metrics.device)
        if present:
            values[present] = torch.stack(_max_abs([grads[i] for i in present])).to(values)
        return values


def _max_abs(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    # The inf-norm is max |g|; _foreach_norm computes all of them in one fused op where it can.
    try:
        return list(torch._foreach_norm(tensors, float("inf")))
    except (AttributeError, RuntimeError, TypeError):  # private API: fall back to one op per layer
        return [t.detach().abs().amax() for t in tensors]


NAME = "grad_magnitude"  # this plugin's name: its per-run state is run.state(NAME)


@hookimpl
def attach(trainer, run, settings):
    state = run.state(NAME, lambda: GradMagnitude(run.model, run.metrics, settings))
    # Hooks go on at the start and off after the first backward: evaluation never pays for them.
    trainer.add_event_handler(Events.STARTED, state.start_recording)
    trainer.add_event_handler(TrainEvents.BACKWARD_COMPLETED, state.on_backward)
    trainer.add_event_handler(Events.COMPLETED, lambda engine: state.stop_recording())


# ---- the end of the run ----------------------------------------------------------------

def _finite(value: float) -> float | None:
    return value if value is not None and math.isfinite(value) else None  # JSON has no NaN


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
        out["first_G"][key] = _finite(g_first)
        out["last_G"][key] = _finite(g_last)
        out["ratio_first_over_last"][key] = _finite(g_first / g_last) if g_last else None
    return out


@hookimpl
def run_finished(run, results, settings):
    state: GradMagnitude | None = run.state(NAME)
    if state is None or state.layers is None:  # never trained (iterations = 0)
        results["grad_magnitude"] = None
        return
    table = run.metrics.table()
    summary = summarize(table, state)
    results["grad_magnitude"] = summary
    if summary is None or not settings["figures"]:
        return
    from runner import artifacts

    title = getattr(getattr(run, "spec", None), "name", "")
    first, last = _first_last(state)
    for filename, figure in (("grad_first_last.png", first_last_figure(table, first, last, title)),
                             ("grad_heatmap.png", heatmap_figure(table, state.names, title))):
        try:
            artifacts.save_figure(run.dir / filename, figure)
        finally:
            import matplotlib.pyplot as plt

            plt.close(figure)


def _recorded(table: dict, name: str) -> tuple[list[int], list[float]]:
    """Recorded points of one column that a log axis can show (finite and positive)."""
    pairs = [(it, v) for it, v in zip(table["iteration"], table[name]) if math.isfinite(v) and v > 0]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def first_last_figure(table: dict, first: str, last: str, title: str = "", size=(7, 4)):
    from runner import figures  # noqa: F401  (sets the Agg backend before pyplot loads)
    import matplotlib.pyplot as plt

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


def heatmap_figure(table: dict, names: list[str], title: str = "", width: float = 8, fontsize: float = 7):
    from runner import figures  # noqa: F401  (sets the Agg backend before pyplot loads)
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
    figure, axes = plt.subplots(figsize=(width, max(2.4, 0.013 * fontsize * len(names) + 1.2)))
    mesh = axes.pcolormesh(x_edges, y_edges, log_g, shading="flat", cmap=cmap)
    axes.set_yticks(range(len(names)), [n[2:].split(" (")[0] for n in names], fontsize=fontsize)
    axes.invert_yaxis()  # first layer at the top, as the forward pass reads
    axes.set(xlabel="iteration", ylabel="layer (forward order)",
             title=f"log10 G per layer - {title}" if title else None)
    figure.colorbar(mesh, ax=axes, label="log10 max |dL/dw|  (grey: zero or no gradient)")
    figure.tight_layout()
    return figure


# ---- the report ---------------------------------------------------------------------------

def _sci(value) -> str:
    """A G value or ratio; summaries hold null for NaN/inf or a zero denominator."""
    return "–" if value is None else f"{value:.1e}"


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
        rows.append([spec.title, accuracy_text(mean, sd, len(spec.runs)) if mean is not None else "–"]
                    + [_sci(c) for c in cells])
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
    from runner import artifacts, figures
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
        figures.close(figure)
        return [Figure(path, f"$G$ of the first and the last conv layer of {spec.title} (seed {seed}, log scale).", 0.5)]
    for file_name, figure, caption in (
            ("first_last", first_last_figure(table, summary["first"], summary["last"], size=(7, 2.4)),
             f"$G = max_i |∂L \\/ ∂w_i|$ of the first and the last conv layer of {spec.title} over iterations "
             f"(seed {seed}, log scale; where a line stops, its G is exactly zero)."),
            ("heatmap", heatmap_figure(table, names, width=7, fontsize=7),
             f"$log_10 G$ of every conv layer of {spec.title} (rows, in forward order) over iterations (seed {seed}); "
             "grey: a gradient of exactly zero.")):
        path = folder / f"grad_{file_name}_{spec.name}.png"
        artifacts.save_figure(path, figure)
        figures.close(figure)
        blocks.append(Figure(path, caption, 1.0))
    return blocks


@hookimpl
def report_sections(runs):
    """Each spec's G figures, and one section comparing every spec's gradients."""
    from runner.report import Paragraph, Section, Table

    sections = []
    for spec in runs.values():
        blocks = _report_figures(spec, runs.workdir)
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
