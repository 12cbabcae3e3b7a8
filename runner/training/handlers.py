"""The core's event handlers on a run's trainer, and plugins' handlers attached in their name."""
from __future__ import annotations

import math

import torch
from ignite.engine import Events

from ..errors import DivergedError
from ..plugin_host.hooks import attributed, current_plugin
from ..progress import Progress


def record_metrics(run) -> None:
    """Every step's loss and accuracy into run.metrics (metrics.csv); every log_every steps, a stop
    if the loss is no longer finite, and the figures the progress display and plugins read."""
    trainer, metrics = run.trainer, run.metrics

    @trainer.on(Events.ITERATION_COMPLETED)
    def record(engine):
        out = engine.state.output
        if run.world > 1:  # the whole batch's numbers: every process saw a slice of it
            import ignite.distributed as idist

            totals = idist.all_reduce(torch.stack([out["loss"].float(), out["correct"].float(),
                                                   torch.tensor(float(out["count"]), device=out["loss"].device)]))
            assert isinstance(totals, torch.Tensor)  # all_reduce returns a tensor for a tensor
            metrics.record(engine.state.iteration, totals[0] / run.world, totals[1], totals[2])
            return
        metrics.record(engine.state.iteration, out["loss"], out["correct"], out["count"])

    @trainer.on(Events.ITERATION_COMPLETED(every=run.spec.train.log_every) | Events.COMPLETED)
    def check(engine):
        # One host read every log_every steps, not every step: the loss (the whole batch's) and the
        # running accuracy in one transfer.
        loss, accuracy = metrics.latest(engine.state.iteration)
        if not math.isfinite(loss):
            raise DivergedError(f"loss became {loss} at iteration {engine.state.iteration}; "
                                "lower train.lr, add warmup (train.warmup) or cap the gradient norm "
                                "(train.clip_grad_norm)")
        engine.state.metrics["loss"] = loss
        engine.state.metrics["accuracy"] = accuracy


def show_progress(run, interactive: bool) -> None:
    """One display over the whole run (a resumed run's starts where it stopped): a bar in a
    terminal, a line at every tenth otherwise, both with rate, ETA, loss and running accuracy."""
    trainer, total = run.trainer, run.spec.train.iterations

    @trainer.on(Events.STARTED)
    def open_display(engine):
        run.progress = Progress(total, run.spec.name, unit="it", interactive=interactive,
                                initial=engine.state.iteration)

    @trainer.on(Events.ITERATION_COMPLETED(every=run.spec.train.log_every) | Events.COMPLETED)
    def advance(engine):
        if engine.state.iteration > run.progress.done:  # COMPLETED right after the last every-th
            run.progress.update(engine.state.iteration - run.progress.done, loss=engine.state.metrics["loss"],
                                accuracy=engine.state.metrics["accuracy"])

    trainer.add_event_handler(Events.COMPLETED, lambda _: run.progress.close())


def attach_plugins(run) -> None:
    """Every enabled plugin's attach hook, with each handler it adds wrapped so that its failure
    names the plugin (the one whose hook is running) and the line of the plugin's file."""
    engines = (run.trainer, run.evaluator)
    for engine in engines:
        engine.add_event_handler = _attributing(engine.add_event_handler)
    try:
        run.hooks.attach(trainer=run.trainer, evaluator=run.evaluator, run=run)
    finally:
        for engine in engines:
            del engine.add_event_handler  # the class's method again


def _attributing(add_event_handler):
    def add(event, handler, *args, **kwargs):
        plugin = current_plugin.get()
        if plugin is not None:
            handler = attributed(handler, plugin, event)
        return add_event_handler(event, handler, *args, **kwargs)

    return add
