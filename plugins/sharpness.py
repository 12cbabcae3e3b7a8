"""Sharpness: the top eigenvalue of the training loss's Hessian at chosen iterations.

After the update of each iteration in `at`, the loss on a fixed batch (the first `batch_size`
training images, through the evaluation transforms: no random augmentation) is differentiated
twice with torch.autograd: the gradient is built with create_graph, and each power-iteration
step is one Hessian-vector product, a backward pass through that graph with the current vector
as grad_outputs. The Rayleigh quotient v'Hv of the normalized vector is the estimate; it stops
once it changes by less than `tolerance` (relative) or after `iterations` steps. Power iteration
finds the eigenvalue of largest magnitude; where that is negative, a second run on the shifted
Hessian H - that * I finds the top one (its steps are counted too). The loss is the training
loss (cross-entropy with the spec's label smoothing), without weight decay, which would add
train.weight_decay to every eigenvalue.

BatchNorm: `batchnorm = "batch"` (default) measures the loss the trainer minimizes, with batch
statistics; the model runs in training mode through torch.func.functional_call with copies of
its buffers, so the running statistics stay as they were. "running" uses eval mode instead.

The training is unchanged by a measurement: the mode is restored, nothing is written to any
.grad (autograd.grad returns the products), the random vector comes from a private generator
and the forward pass runs inside torch.random.fork_rng, so no global random number is drawn.

summary.json `sharpness`: per point iteration, eigenvalue, loss, lr (the rate of the next
step), power steps, seconds; sharpness.png: eigenvalue against iteration beside 2/lr, the edge
of stability of plain gradient descent, and the threshold of the spec's momentum.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from ignite.engine import Events

from runner import Plugin, figures, hookimpl, setting
from runner.artifacts import save_figure
from runner.results import finite, number_text


@dataclass(frozen=True)
class Settings:
    at: list[int] = setting([1, 500, 1000, 2000], "iterations after whose update the eigenvalue is measured",
                            item=int, min=1, quick=[1, 12])
    batch_size: int = setting(1000, "training images in the fixed batch (the first of the training set)", min=1,
                              quick=100)
    iterations: int = setting(20, "power-iteration steps at most (one Hessian-vector product each)", min=1,
                              quick=5)
    tolerance: float = setting(1e-3, "stop once the estimate changes by less than this, relative", min=0.0)
    batchnorm: str = setting("batch", "BatchNorm during the measurement: batch statistics (training mode, "
                                      "running statistics untouched) or the running ones (eval mode)",
                             choices=("batch", "running"))
    seed: int = setting(0, "seed of the power iteration's start vector (a private generator)", min=0)


plugin = Plugin(settings=Settings, help="top Hessian eigenvalue of the training loss at chosen iterations")


# ---- the power iteration ------------------------------------------------------------------

def top_eigenvalue(loss: torch.Tensor, params: list[torch.Tensor], *, iterations: int, tolerance: float,
                   seed: int = 0) -> tuple[float, int]:
    """The largest eigenvalue of the Hessian of `loss` in `params`, by power iteration on
    Hessian-vector products (autograd double backward). Returns (eigenvalue, steps used).

    Power iteration finds the eigenvalue of largest magnitude; where that is negative (early in
    training, or on a small batch), a second run on H - that * I finds the largest one."""
    grads = torch.autograd.grad(loss, params, create_graph=True)
    generator = torch.Generator(device=params[0].device).manual_seed(seed)
    start = [torch.randn(p.shape, generator=generator, device=p.device, dtype=p.dtype) for p in params]

    def hessian_times(vector):
        return torch.autograd.grad(grads, params, grad_outputs=vector, retain_graph=True)

    largest, steps = _power(hessian_times, start, iterations, tolerance)
    if largest >= 0:
        return largest, steps
    shifted = lambda vector: [h - largest * v for h, v in zip(hessian_times(vector), vector)]
    gap, more = _power(shifted, start, iterations, tolerance)
    return gap + largest, steps + more


def _power(apply, start: list[torch.Tensor], iterations: int, tolerance: float) -> tuple[float, int]:
    """Power iteration of a symmetric linear map: the Rayleigh quotient of its dominant eigenvector,
    once it changes by less than `tolerance` (relative), and the steps taken."""
    vector = _normalized(start)
    estimate = math.nan
    for step in range(1, iterations + 1):
        product = apply(vector)
        previous, estimate = estimate, float(sum((h * v).sum() for h, v in zip(product, vector)))
        if abs(estimate - previous) <= tolerance * abs(estimate):
            return estimate, step
        vector = _normalized(product)
    return estimate, iterations


def _normalized(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    norm = torch.sqrt(sum(t.pow(2).sum() for t in tensors))
    return [t / norm for t in tensors]


def measure(model, images, labels, *, label_smoothing: float = 0.0, batchnorm: str = "batch",
            iterations: int = 20, tolerance: float = 1e-3, seed: int = 0) -> dict:
    """Top Hessian eigenvalue of the cross-entropy of `model` on one batch; the model's mode,
    buffers, .grad and the global random state are as they were after it."""
    started = time.perf_counter()
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    params = dict(model.named_parameters())
    buffers = {name: b.clone() for name, b in model.named_buffers()}  # BatchNorm updates the copies
    was_training = model.training
    cuda = [images.device] if images.device.type == "cuda" else []
    try:
        model.train(batchnorm == "batch")
        with torch.random.fork_rng(devices=cuda), torch.enable_grad():
            logits = torch.func.functional_call(model, (params, buffers), (images,))
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
            eigenvalue, steps = top_eigenvalue(loss, [params[n] for n in names], iterations=iterations,
                                               tolerance=tolerance, seed=seed)
    finally:
        model.train(was_training)
    if images.device.type == "cuda":
        torch.cuda.synchronize(images.device)
    return {"eigenvalue": eigenvalue, "loss": float(loss.detach()), "steps": steps,
            "seconds": round(time.perf_counter() - started, 3)}


# ---- hooks --------------------------------------------------------------------------------

@hookimpl
def attach(trainer, run, settings, state):
    state.points, state.lrs = [], []
    wanted = set(settings.at)
    train = run.spec.train
    count = min(settings.batch_size, len(run.train_labels))
    with torch.no_grad():  # the evaluation transforms: normalization, no random augmentation
        state.images = run.eval_pipeline(run.train_images[:count].float())
        if train["channels_last"]:
            state.images = state.images.contiguous(memory_format=torch.channels_last)
    state.labels = run.train_labels[:count]

    @trainer.on(Events.ITERATION_COMPLETED)
    def record_lr(engine):  # the rate of the next step: 2/lr is the edge of stability there
        state.lrs.append(float(run.optimizer.param_groups[0]["lr"]))  # a tensor under train.step = "graph"

    @trainer.on(Events.ITERATION_COMPLETED(event_filter=lambda engine, iteration: iteration in wanted))
    def record(engine):
        point = measure(run.model, state.images, state.labels, label_smoothing=train["label_smoothing"],
                        batchnorm=settings.batchnorm, iterations=settings.iterations,
                        tolerance=settings.tolerance, seed=settings.seed)
        state.points.append({"iteration": engine.state.iteration, **point,
                             "lr": float(run.optimizer.param_groups[0]["lr"])})


@hookimpl
def run_finished(run, results, settings, state):
    train = run.spec.train
    done = {p["iteration"] for p in state.points}
    summary = results["sharpness"] = {
        "batch_size": len(state.labels), "batchnorm": settings.batchnorm, "iterations": settings.iterations,
        "tolerance": settings.tolerance,
        "momentum": train["momentum"] if train["optimizer"] == "sgd" else None,
        "nesterov": bool(train["nesterov"]) if train["optimizer"] == "sgd" else None,
        "points": [{**p, "eigenvalue": finite(p["eigenvalue"]), "loss": finite(p["loss"]),
                    "two_over_lr": finite(2 / p["lr"]) if p["lr"] > 0 else None} for p in state.points],
        "skipped": sorted(set(settings.at) - done),  # past the run's end (or before a resume)
        "seconds": round(sum(p["seconds"] for p in state.points), 3),
        # The rate at every iteration, compact, for the figure's 2/lr line.
        "lrs": [float(f"{lr:.4g}") for lr in state.lrs],
    }
    if summary["points"]:
        figure = sharpness_figure(summary, f"{run.spec.name}: sharpness")
        save_figure(run.dir / "sharpness.png", figure)


def momentum_threshold(lr: float, momentum: float | None, nesterov: bool | None) -> float | None:
    """The largest stable sharpness of SGD with momentum on a quadratic: (2 + 2b) / lr for heavy
    ball, (2 + 2b) / ((1 + 2b) lr) for Nesterov (Cohen et al. 2021, appendix); None without momentum."""
    if not momentum or lr <= 0:
        return None
    return (2 + 2 * momentum) / ((1 + 2 * momentum) * lr) if nesterov else (2 + 2 * momentum) / lr


# ---- figures and the report ---------------------------------------------------------------

def sharpness_figure(summary: dict, title: str = "", size=(6, 3.6)):
    plt = figures.plt
    figure, axes = plt.subplots(figsize=size)
    lrs = summary.get("lrs") or []
    steps = [(i, lr) for i, lr in enumerate(lrs, 1) if lr > 0]
    if steps:
        axes.plot([i for i, _ in steps], [2 / lr for _, lr in steps], color="k", lw=1, label="2 / lr")
        beta, nesterov = summary.get("momentum"), summary.get("nesterov")
        if beta:
            axes.plot([i for i, _ in steps], [momentum_threshold(lr, beta, nesterov) for _, lr in steps], color="gray",
                      lw=1, ls="--", label=f"{'Nesterov' if nesterov else 'heavy-ball'} momentum {beta:g} threshold")
    points = [p for p in summary["points"] if p["eigenvalue"] is not None]
    axes.plot([p["iteration"] for p in points], [p["eigenvalue"] for p in points], marker="o", color="tab:red",
              label="top Hessian eigenvalue")
    if all(p["eigenvalue"] > 0 for p in points):
        axes.set_yscale("log")
        from matplotlib import ticker  # loaded with figures' pyplot
        axes.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        axes.yaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
        axes.yaxis.set_minor_formatter(ticker.NullFormatter())
    values = [p["eigenvalue"] for p in points]
    if values:  # 2/lr grows without bound where the schedule reaches 0
        axes.set_ylim(top=max(max(values) * 20, min((2 / lr for _, lr in steps), default=1) * 2))
    axes.set(xlabel="iteration", ylabel="sharpness", title=title or None)
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=6.5, loc="best")
    figure.tight_layout()
    return figure


@hookimpl
def report_sections(runs, specs):
    """Each spec's sharpness against the edge of stability, as a figure and a table."""
    from runner.report import Figure, Paragraph, Section, Table

    sections = []
    for spec in specs:
        summary = spec.representative.get("sharpness")
        if not summary or not summary.get("points"):
            continue
        path = runs.workdir / f"sharpness_{spec.name}.png"
        figure = sharpness_figure(summary, size=(3.4, 2.6))
        save_figure(path, figure)
        rows = [[str(p["iteration"]), number_text(p["eigenvalue"], ".4g"), number_text(p["two_over_lr"], ".4g"),
                 number_text(p["loss"], ".3f"), str(p["steps"]), f"{p['seconds']:.1f}"] for p in summary["points"]]
        points = [p for p in summary["points"] if p["eigenvalue"] is not None and p["two_over_lr"] is not None]
        ratios = [p["eigenvalue"] / p["two_over_lr"] for p in points]
        closest = f"; it reached at most {max(ratios):.2g} times 2 / lr" if ratios else ""
        sections.append(Section(spec=spec.name, fields={"sharpness": summary}, blocks=[
            Paragraph(f"The top eigenvalue of the training loss's Hessian on a fixed batch of {summary['batch_size']} "
                      f"training images (BatchNorm on {summary['batchnorm']} statistics), by power iteration on "
                      f"Hessian-vector products (autograd double backward, at most {summary['iterations']} steps, "
                      f"relative tolerance {summary['tolerance']:g}){closest}. The measurements took "
                      f"{summary['seconds']:.1f} s in all."),
            Table(["iteration", "top eigenvalue", "2 / lr", "loss", "power steps", "seconds"], rows,
                  f"Top Hessian eigenvalue after the update of each iteration ({spec.title}); 2 / lr, with lr the next "
                  "step's rate, is the edge of stability of plain gradient descent."),
            Figure(path, f"Top Hessian eigenvalue over training against the edge of stability 2 / lr and the "
                         f"momentum's threshold ({spec.title}).", 0.5)]))
    return sections
