"""TensorBoard export: a run's metrics, settings, test accuracy and figures as event files, live.

Built on ignite's TensorboardLogger (torch.utils.tensorboard's SummaryWriter, which needs the
`tensorboard` package: `pip install -e '.[tensorboard]'`). Event files go to the run folder's
tensorboard/ (or `log_dir`/<spec>/<run id>), so `tensorboard --logdir artifacts` shows every run:
- scalars `train/<column>` of every metrics.csv column (loss, batch_accuracy, running_accuracy and
  the plugins' columns such as G/...) at iteration 1, every `every`-th and the last, only where the
  column has a value; `lr/group_0`; `test/accuracy` when the test set is evaluated;
- the resolved spec as text (`spec.toml`) and as flat hyperparameters (the HPARAMS tab, beside
  test/accuracy);
- at the end, the results that become summary.json as text and the run folder's figures as images.

A failure (the package missing, a folder that cannot be written, a full disk) prints one warning
naming what to do, and the run goes on without TensorBoard.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ignite.engine import Events

from runner import Plugin, hookimpl, setting
from runner.trackers import Guard, flat, latest_row, log_points, record_the_end

INSTALL = "pip install -e '.[tensorboard]'"
FLUSH_SECONDS = 10  # how often the event files reach the disk, so TensorBoard shows the run as it trains


@dataclass(frozen=True)
class Settings:
    every: int = setting(0, "log the metrics every N iterations (and at the first and last); 0: the spec's "
                            "train.log_every", min=0)
    log_dir: str = setting("", "folder for the event files, each run in <log_dir>/<spec>/<run id>; "
                               "default: the run folder's tensorboard/")
    figures: bool = setting(True, "at the end, add the results (summary.json) as text and the run folder's "
                                  "figures as images")


plugin = Plugin(settings=Settings, help="record metrics, settings and figures as TensorBoard event files "
                                        "(ignite's TensorboardLogger)")


def _text(body: str, language: str) -> str:
    return f"```{language}\n{body}\n```"  # TensorBoard's text tab renders Markdown


def start(run, settings: Settings, trainer, evaluator, guard: Guard, state) -> None:
    import tensorboard  # noqa: F401  (torch's SummaryWriter needs it; ignite's own message would name tensorboardX)
    from ignite.handlers.tensorboard_logger import (
        OptimizerParamsHandler,
        OutputHandler,
        TensorboardLogger,
        global_step_from_engine,
    )
    from torch.utils.tensorboard.summary import hparams

    log_dir = Path(settings.log_dir) / run.spec.name / run.dir.name if settings.log_dir else run.dir / "tensorboard"
    state.logger = logger = TensorboardLogger(log_dir=str(log_dir), flush_secs=FLUSH_SECONDS)
    state.log_dir = log_dir
    iteration = global_step_from_engine(trainer, Events.ITERATION_COMPLETED)
    points = log_points(run, settings.every)
    logger.attach(trainer, guard.handler(OutputHandler("train", output_transform=latest_row(run, trainer),
                                                       global_step_transform=iteration)), points)
    if run.optimizer is not None:  # an evaluate-only run (an attack) has none
        logger.attach(trainer, guard.handler(OptimizerParamsHandler(run.optimizer, "lr")), points)
    logger.attach(evaluator, guard.handler(OutputHandler("test", metric_names=["accuracy"],
                                                         global_step_transform=iteration)), Events.COMPLETED)
    # The hyperparameters now, the session's end when the run finishes (as SummaryWriter.add_hparams
    # writes them, but into this run's own event file rather than a new folder).
    experiment, session_start, state.session_end = hparams(flat(run.spec.values), {"test/accuracy": None})
    logger.writer.file_writer.add_summary(experiment)
    logger.writer.file_writer.add_summary(session_start)
    logger.writer.add_text("spec.toml", _text(run.spec.dumps(), "toml"))


def finish(run, results: dict, settings: Settings, state) -> None:
    writer, step = state.logger.writer, run.metrics.done
    results["tensorboard"] = {"log_dir": str(state.log_dir)}
    if settings.figures:
        import matplotlib.image

        writer.add_text("summary.json", _text(json.dumps(results, indent=2), "json"), step)
        for path in sorted(run.dir.glob("*.png")):
            writer.add_image(f"figures/{path.stem}", matplotlib.image.imread(path)[..., :3], step, dataformats="HWC")
    writer.file_writer.add_summary(state.session_end)


@hookimpl(trylast=True)  # after the other plugins' attach: their columns are filled when a row is logged
def attach(trainer, evaluator, run, settings, state):
    if run.rank:  # one record per run: rank 0's
        return
    # ImportError: the package is missing; anything else: where the event files go.
    state.guard = guard = Guard(run, "tensorboard", lambda exc: f"install it: {INSTALL}" if isinstance(exc, ImportError)
                                else f"check that plugins.tensorboard.log_dir ({settings.log_dir or 'the run folder'}) "
                                     "can be written")
    try:
        start(run, settings, trainer, evaluator, guard, state)
    except Exception as exc:
        guard.warn("off for this run", exc)
        _close(state)


@hookimpl(wrapper=True)
def run_finished(run, results, settings, state):
    try:
        return (yield)  # the other plugins' run_finished first: their figures are written, results complete
    finally:
        record_the_end(state, lambda: finish(run, results, settings, state))
        _close(state)


def _close(state) -> None:
    logger = getattr(state, "logger", None)
    state.logger = None
    if logger is not None:
        try:
            logger.close()
        except Exception:  # already reported, or nothing left to lose but this flush
            pass
