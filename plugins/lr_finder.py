"""The learning-rate range test (Smith 2015; fastai's lr_find) through ignite's FastaiLRFinder.

Before the main training, the run's model trains for `num_iter` steps with the run's optimizer,
loss and augmentation while the learning rate grows from `start_lr` to `end_lr` (exponentially or
linearly); ignite records the smoothed loss at each rate, stops once it exceeds `diverge_th`
times the best, and suggests the rate where the loss falls fastest. FastaiLRFinder then restores
the model (BatchNorm statistics included) and the optimizer, and the test runs inside
torch.random.fork_rng, so the main training starts from the same weights and draws the same
random numbers as a run without the test: its metrics.csv is the same.

The test runs in `attach`, before training starts: its seconds count as setup, not as training.
It has its own engine with the trainer's step (forward, loss, backward, optimizer step), without
the run's schedule or any other handler, so nothing else records its steps. A resumed run repeats
it (the same initial weights, the same result).

Writes lr_finder.png (loss against rate, log x, the suggestion and the spec's rate marked) and
summary.json `lr_finder`: suggested_lr, spec_lr, lrs and losses (4 significant digits; null where
the loss was not finite), diverged, seconds.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from runner import Plugin, SpecError, figures, hookimpl, setting
from runner.artifacts import save_figure


@dataclass(frozen=True)
class Settings:
    start_lr: float = setting(1e-5, "learning rate of the first step", min=1e-12)
    end_lr: float = setting(10.0, "learning rate the test grows to (stops earlier if the loss diverges)", min=1e-12)
    num_iter: int = setting(100, "steps of the test (one batch each)", min=3, quick=20)
    step_mode: str = setting("exp", "how the rate grows between start_lr and end_lr", choices=("exp", "linear"))
    diverge_th: float = setting(5.0, "stop once the smoothed loss exceeds this many times its best", min=1.0)
    smooth_f: float = setting(0.05, "weight of the newest loss in the running average (fastai's 0.05)",
                              min=0.0, max=0.99)


plugin = Plugin(settings=Settings, help="learning-rate range test before training (ignite's FastaiLRFinder)")


@hookimpl
def configure(spec, settings):
    if settings.start_lr >= settings.end_lr:
        raise SpecError(f"{settings.start_lr:g} must be below end_lr ({settings.end_lr:g})",
                        key="plugins.lr_finder.start_lr")


@hookimpl
def attach(run, settings, state):
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[run.device] if run.device.type == "cuda" else []):
        history, suggested, diverged = range_test(run, settings)
    run.optimizer.zero_grad(set_to_none=True)  # the test's last gradients are not the run's
    if run.device.type == "cuda":
        torch.cuda.synchronize(run.device)
    state.summary = {
        "suggested_lr": suggested,
        "spec_lr": run.spec.train["lr"],
        "start_lr": settings.start_lr, "end_lr": settings.end_lr, "num_iter": settings.num_iter,
        "step_mode": settings.step_mode, "diverge_th": settings.diverge_th,
        "steps": len(history["lr"]),
        "diverged": diverged,
        "lrs": [_compact(v) for v in history["lr"]],
        "losses": [_compact(v) for v in history["loss"]],
        "seconds": round(time.perf_counter() - started, 3),
    }


@hookimpl
def run_finished(run, results, state):
    summary = results["lr_finder"] = state.summary
    figure = range_figure(summary, f"{run.spec.name}: learning-rate range test")
    save_figure(run.dir / "lr_finder.png", figure)


# ---- the test -----------------------------------------------------------------------------

def range_test(run, settings) -> tuple[dict, float | None, bool]:
    """Run FastaiLRFinder on the run's model and optimizer; both are restored when it returns.
    Returns its history {lr, loss}, the suggested rate (None when the curve has no falling part
    to suggest from) and whether the loss diverged before end_lr."""
    from ignite.engine import Engine
    from ignite.handlers import FastaiLRFinder

    engine = Engine(_training_step(run))
    engine.logger.disabled = True
    finder = FastaiLRFinder()
    to_save = {"model": run.model, "optimizer": run.optimizer}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Run completed without loss diverging")  # reported as diverged=false
        with finder.attach(engine, to_save=to_save, output_transform=_finite_loss, num_iter=settings.num_iter,
                           start_lr=float(settings.start_lr), end_lr=float(settings.end_lr),
                           step_mode=settings.step_mode, smooth_f=settings.smooth_f,
                           diverge_th=settings.diverge_th) as test:
            test.run(_batches(run, settings.num_iter))
    history = finder.get_results()
    try:
        suggested = float(finder.lr_suggestion())
    except RuntimeError:  # the loss rose from the start: start_lr is too high
        suggested = None
    return history, suggested, len(history["lr"]) < settings.num_iter


def _training_step(run):
    """The trainer's step on the run's model, optimizer and augmentation, returning the loss."""
    train, model, optimizer, pipeline = run.spec.train, run.model, run.optimizer, run.train_pipeline
    bf16 = run.results.get("precision") == "bf16"

    def step(engine, batch):
        images, labels = batch
        model.train()
        pipeline.train()
        x = pipeline(images.float())
        if train["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=train["label_smoothing"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if train["clip_grad_norm"]:
            torch.nn.utils.clip_grad_norm_(model.parameters(), train["clip_grad_norm"], foreach=True)
        optimizer.step()
        return loss.detach()

    return step


def _batches(run, steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`steps` training batches of the run's batch size, from fresh permutations of the training set."""
    n, size = len(run.train_labels), min(run.spec.train["batch_size"], len(run.train_labels))
    per_epoch = n // size
    order = torch.cat([torch.randperm(n) for _ in range(math.ceil(steps / per_epoch))]).to(run.train_labels.device)
    chunks = order[:per_epoch * math.ceil(steps / per_epoch) * size].view(-1, size)[:steps]
    return [(run.train_images[index], run.train_labels[index]) for index in chunks]


def _finite_loss(loss: torch.Tensor) -> float:
    """The step's loss; infinite when it is not finite, so that FastaiLRFinder sees it diverge."""
    value = float(loss)
    return value if math.isfinite(value) else math.inf


def _compact(value) -> float | None:
    value = float(value)
    return float(f"{value:.4g}") if math.isfinite(value) else None


# ---- figures and the report ---------------------------------------------------------------

def range_figure(summary: dict, title: str = "", size=(6, 3.6)):
    """Smoothed loss against learning rate (log x), the suggestion as a dot, the spec's rate as a line."""
    plt = figures.plt
    points = [(lr, loss) for lr, loss in zip(summary["lrs"], summary["losses"]) if lr and loss is not None]
    figure, axes = plt.subplots(figsize=size)
    if points:
        axes.plot(*zip(*points), lw=1.4, color="tab:blue", label="smoothed training loss")
    suggested = summary.get("suggested_lr")
    if suggested is not None:
        at = min(points, key=lambda p: abs(math.log(p[0] / suggested)))[1] if points else None
        axes.scatter([suggested], [at], color="tab:red", s=40, zorder=3, label=f"suggested {suggested:.2g}")
    if summary.get("spec_lr"):
        axes.axvline(summary["spec_lr"], color="k", ls="--", lw=1, label=f"spec's peak rate {summary['spec_lr']:g}")
    axes.set_xscale("log")
    if points:  # the diverged tail would flatten the rest of the curve
        low = min(loss for _, loss in points)
        high = min(max(loss for _, loss in points), low * summary.get("diverge_th", 5))
        margin = 0.05 * (high - low) or 0.05 * low
        axes.set_ylim(low - margin, high + 8 * margin)  # room for the legend above the curve
    axes.set(xlabel="learning rate", ylabel="loss (smoothed)", title=title or None)
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=7, loc="upper center")
    figure.tight_layout()
    return figure


@hookimpl
def report_sections(runs, specs):
    """Each range test's curve, and its suggested rate beside the rate the spec trains at."""
    from runner.report import Figure, Paragraph, Section

    sections = []
    for spec in specs:
        summary = spec.representative.get("lr_finder")
        if not summary or not summary.get("lrs"):
            continue
        path = runs.workdir / f"lr_finder_{spec.name}.png"
        figure = range_figure(summary, size=(3.4, 2.6))
        save_figure(path, figure)
        suggested, used = summary.get("suggested_lr"), summary.get("spec_lr")
        if suggested is None:
            verdict = "The loss rose from the first steps, so the test suggests no rate: lower start_lr."
        else:
            ratio = used / suggested
            verdict = (f"It suggests {suggested:.2g} (where the smoothed loss falls fastest); the spec trains at a "
                       f"peak rate of {used:g}, {ratio:.2g} times that"
                       + (", within the usual factor of 10 above the suggestion." if 0.5 <= ratio <= 10 else "."))
        stop = (f"The loss diverged at {summary['lrs'][-1]:.2g} after {summary['steps']} steps"
                if summary.get("diverged") else f"The loss did not diverge up to {summary.get('end_lr'):g}")
        sections.append(Section(spec=spec.name, fields={"lr_finder": summary}, blocks=[
            Paragraph(f"Learning-rate range test (ignite's FastaiLRFinder): {summary['steps']} steps of batch "
                      "training with the rate growing "
                      f"{'exponentially' if summary['step_mode'] == 'exp' else 'linearly'} "
                      f"from {summary['start_lr']:g}, the model and optimizer restored afterwards "
                      f"({summary['seconds']:.1f} s). {stop}. {verdict}"),
            Figure(path, f"Smoothed training loss against the learning rate in the range test ({spec.title}; log "
                         "scale): the red dot is the suggested rate, the dashed line the spec's peak rate.", 0.5)]))
    return sections
