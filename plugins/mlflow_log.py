"""MLflow export: a run's metrics, settings, test accuracy and files as an MLflow run, live.

Built on ignite's MLflowLogger (`pip install -e '.[mlflow]'`); no server. The store is
`tracking_uri`, else $MLFLOW_TRACKING_URI, else a SQLite file in the run folder
(sqlite:///<run folder>/mlflow.db, its artifacts in <run folder>/mlartifacts: MLflow 3 refuses a
plain-folder store unless MLFLOW_ALLOW_FILE_STORE=true). One MLflow run per runner run, named after
the run folder, in the experiment `experiment` (default: the spec's name); a resumed run goes on in
the same MLflow run. It records:
- metrics `train <column>` of every metrics.csv column (loss, batch_accuracy, running_accuracy and
  the plugins' columns such as G/...; characters MLflow refuses in a name, like parentheses, are
  left out: `train G/conv01 0`) at iteration 1, every `every`-th and the last, only where the
  column has a value; `lr group_0`; `test accuracy` when the test set is evaluated;
- the resolved spec as flat parameters (`train.lr`, `plugins.grad_magnitude.every`, ...) and tags;
- at the end, artifacts: spec.toml, the results that become summary.json, and the run folder's figures.

Metrics are written by MLflow's own thread (its async logging, on for the run and given back after):
a log point costs the training thread no disk write. A failure (the package missing, a bad tracking
URI, a full disk, on either thread) prints one warning naming what to do, and the run goes on
without MLflow.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from dataclasses import dataclass

from ignite.engine import Events

from runner import Plugin, hookimpl, setting
from runner.trackers import Guard as TrackerGuard
from runner.trackers import flat, latest_row, log_points, record_the_end

INSTALL = "pip install -e '.[mlflow]'"
RUN_DIR_TAG = "runner.run_dir"  # marks the MLflow runs this plugin started, and finds a resumed run's
ASYNC_LOGGER = "mlflow.utils.async_logging.async_logging_queue"  # where MLflow's logging thread reports failures


@dataclass(frozen=True)
class Settings:
    every: int = setting(0, "log the metrics every N iterations (and at the first and last); 0: the spec's "
                            "train.log_every", min=0)
    tracking_uri: str = setting("", "MLflow store (sqlite:///path.db, http://host:5000, ...); default "
                                    "$MLFLOW_TRACKING_URI, else sqlite:///<run folder>/mlflow.db")
    experiment: str = setting("", "MLflow experiment; default: the spec's name")
    artifacts: bool = setting(True, "at the end, log spec.toml, the results (summary.json) and the run "
                                    "folder's figures as artifacts")


plugin = Plugin(settings=Settings, help="record metrics, settings and files as an MLflow run "
                                        "(ignite's MLflowLogger, a local store)")


class Guard(TrackerGuard, logging.Filter):
    """Turns MLflow's errors into one warning each run (runner.trackers.Guard), and is a filter on the
    logger of MLflow's logging thread, which reports each batch it failed to write as an error line:
    the first becomes this warning, the rest are dropped."""

    def __init__(self, run, settings: Settings):
        logging.Filter.__init__(self)
        TrackerGuard.__init__(self, run, "mlflow", self._hint)
        self.uri = ""

    def _hint(self, exc) -> str:
        if isinstance(exc, ImportError):
            return f"install it: {INSTALL}"
        return (f"check plugins.mlflow.tracking_uri ({self.uri or 'not chosen yet'}), e.g. "
                "--set plugins.mlflow.tracking_uri=sqlite:///mlflow.db")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        if not self.off:
            self.warn("logging stopped", record.getMessage())
        return False


def metric_name(column: str) -> str:
    """A metrics.csv column as MLflow takes a name (letters, digits, _ - . / and spaces):
    "G/conv01 (0)" -> "G/conv01 0"."""
    return re.sub(r"[^\w./ -]", "", column)


def _experiment(mlflow, name: str, artifact_location: str | None) -> str:
    """The experiment's id, created if new (another process may create it at the same moment)."""
    found = mlflow.get_experiment_by_name(name)
    if found is None:
        try:
            return mlflow.create_experiment(name, artifact_location=artifact_location)
        except mlflow.exceptions.MlflowException:
            found = mlflow.get_experiment_by_name(name)
            if found is None:
                raise
    return found.experiment_id


def start(run, settings: Settings, trainer, evaluator, guard: Guard, state) -> None:
    import mlflow
    from ignite.handlers.mlflow_logger import (
        MLflowLogger,
        OptimizerParamsHandler,
        OutputHandler,
        global_step_from_engine,
    )
    from mlflow.environment_variables import MLFLOW_ENABLE_ASYNC_LOGGING
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    run_dir = run.dir.resolve()
    with _quiet("mlflow.store.db.utils"):  # "Creating initial MLflow database tables..." on every new store
        _start_run(run, settings, guard, state, run_dir, mlflow)
    # Metrics go to the store from MLflow's own thread: a log point costs the training thread no disk
    # write (its run's end waits for them). The process's own choice is given back at the end.
    state.previous_async = MLFLOW_ENABLE_ASYNC_LOGGING.get()
    mlflow.config.enable_async_logging(True)
    logging.getLogger(ASYNC_LOGGER).addFilter(guard)
    state.logger = logger = MLflowLogger()  # takes the run started above
    state.run_id = mlflow.active_run().info.run_id
    logger.log_params({key: str(value)[:MAX_PARAM_VAL_LENGTH] for key, value in flat(run.spec.values).items()})

    iteration = global_step_from_engine(trainer, Events.ITERATION_COMPLETED)
    points = log_points(run, settings.every)
    logger.attach(trainer, guard.handler(OutputHandler("train", output_transform=latest_row(run, trainer, metric_name),
                                                       global_step_transform=iteration)), points)
    if run.optimizer is not None:  # an evaluate-only run (an attack) has none
        logger.attach(trainer, guard.handler(OptimizerParamsHandler(run.optimizer, "lr")), points)
    logger.attach(evaluator, guard.handler(OutputHandler("test", metric_names=["accuracy"],
                                                         global_step_transform=iteration)), Events.COMPLETED)


def _start_run(run, settings: Settings, guard: Guard, state, run_dir, mlflow) -> None:
    """Point MLflow at the store and start (or, resuming, continue) this run's MLflow run."""
    chosen = settings.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    guard.uri = uri = chosen or f"sqlite:///{run_dir / 'mlflow.db'}"
    # MLflow keeps the URI in the process and in $MLFLOW_TRACKING_URI: given back as it was (or unset) at the end.
    state.previous_uri = mlflow.get_tracking_uri() if mlflow.tracking.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    leftover = mlflow.active_run()
    if leftover is not None and RUN_DIR_TAG in leftover.data.tags:  # a run of this process that stopped early
        mlflow.end_run("FAILED")
    experiment = _experiment(mlflow, settings.experiment or run.spec.name,
                             None if chosen else (run_dir / "mlartifacts").as_uri())
    earlier = mlflow.search_runs([experiment], filter_string=f"tags.`{RUN_DIR_TAG}` = '{run_dir}'",
                                 output_format="list")  # this run's, before a resume
    tags = {RUN_DIR_TAG: str(run_dir), "runner.spec": run.spec.name, "runner.seed": str(run.spec.seed),
            "runner.quick": str(run.quick), "runner.overrides": " ".join(o.text for o in run.spec.overrides)}
    nested = mlflow.active_run() is not None  # inside a notebook's own run
    if earlier:
        mlflow.start_run(run_id=earlier[0].info.run_id, nested=nested)
    else:
        mlflow.start_run(experiment_id=experiment, run_name=run.dir.name, tags=tags, nested=nested)


@contextlib.contextmanager
def _quiet(logger_name: str):
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def finish(run, results: dict, settings: Settings, state) -> None:
    import mlflow

    results["mlflow"] = {"tracking_uri": mlflow.get_tracking_uri(), "run_id": state.run_id}
    if settings.artifacts:
        mlflow.log_artifact(str(run.dir / "spec.toml"))
        mlflow.log_text(json.dumps(results, indent=2) + "\n", "summary.json")
        for path in sorted(run.dir.glob("*.png")):
            mlflow.log_artifact(str(path), "figures")


@hookimpl(trylast=True)  # after the other plugins' attach: their columns are filled when a row is logged
def attach(trainer, evaluator, run, settings, state):
    if run.rank:  # one record per run: rank 0's
        return
    state.guard = guard = Guard(run, settings)
    try:
        start(run, settings, trainer, evaluator, guard, state)
    except Exception as exc:
        guard.warn("off for this run", exc)
        _close(state, "FAILED")


@hookimpl(wrapper=True)
def run_finished(run, results, settings, state):
    status = "FAILED"
    try:
        outcome = yield  # the other plugins' run_finished first: their figures are written, results complete
        status = "FINISHED"
        return outcome
    finally:
        record_the_end(state, lambda: finish(run, results, settings, state))
        _close(state, status)


def _close(state, status: str) -> None:
    """End the MLflow run (if one was started; it waits for the metrics still queued) and give back the
    process's tracking URI and async-logging choice."""
    logger, state.logger = getattr(state, "logger", None), None
    try:
        import mlflow
    except ImportError:
        return
    try:
        active = mlflow.active_run()
        if logger is not None or (active is not None and RUN_DIR_TAG in active.data.tags):
            mlflow.end_run(status)
    except Exception:  # already reported, or nothing left to lose but the run's status
        pass
    finally:
        if hasattr(state, "previous_uri"):
            mlflow.set_tracking_uri(state.previous_uri)
        if hasattr(state, "previous_async"):
            mlflow.config.enable_async_logging(state.previous_async)
        logging.getLogger(ASYNC_LOGGER).removeFilter(getattr(state, "guard", None))
