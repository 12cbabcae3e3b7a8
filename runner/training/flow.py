"""One run of one spec, top to bottom: the flow every plugin hooks into.

    seed -> data -> transforms -> model (+ change_model) -> engines -> handlers
    (+ attach) -> checkpoint -> train -> evaluate -> results (+ run_finished) -> artifacts

The parts are built in runner/training/builders.py, the core's handlers are in runner/training/handlers.py,
checkpoints in runner/training/checkpoint.py, data-parallel launches in runner/suite/distributed.py.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
import traceback
from pathlib import Path

import torch
from ignite.utils import manual_seed

from .. import artifacts
from ..data import DataSource
from ..data import resolve as resolve_data
from ..errors import DivergedError, PluginError, RunnerError
from ..plugin_host.catalogue import Catalogue
from ..progress import notice
from ..results import headline
from ..spec.loading import Spec
from . import checkpoint, figures, handlers, memory, sources, trial
from .builders import build_engines, build_model, build_transforms, device_name, load_data, resolve_device
from .engine import EpochBatches
from .fingerprint import code_version, fingerprint
from .machine_load import OtherWork
from .metrics import MetricsLog, per_class
from .state import Run


def execute(spec: Spec, catalogue: Catalogue, *, out="artifacts", data: str | DataSource | None = None, quick=False,
            show_progress=None, resume_dir=None, run_dir=None, rank=0, world=1) -> Run:
    """Train and evaluate one spec; returns the finished Run (its results and folder).

    With resume_dir, continue that run from its last checkpoint (its own spec.toml is the spec).
    rank/world: this process's place in a data-parallel run (see execute_distributed), whose
    folder run_dir the caller made; only rank 0 writes to it. data: --data's text, or a source
    already resolved (runner.data.resolve), which the run then carries.
    """
    memory.keep_freed_memory()  # each step's activations reuse freed pages instead of new ones
    device = resolve_device(spec.device)
    if rank:
        # This machine's GPU for the process (ignite set it from LOCAL_RANK): across nodes, ranks outnumber GPUs.
        device = torch.device(device.type, torch.cuda.current_device()) if device.type == "cuda" else device
    # Missing data, or a missing run of a spec it reads, fails before a run folder exists (or,
    # resuming, before the run is marked running: it stays interrupted, to be resumed again).
    source = resolve_data(data, spec)
    if not rank:
        given = resume_dir or run_dir
        sources.require_runs(spec, Path(given).parent.parent if given else out, quick)
    run_dir = Path(resume_dir or run_dir or artifacts.new_run_dir(Path(out), spec.name, spec.seed))
    run = Run(spec=spec, catalogue=catalogue, device=device, dir=run_dir, quick=quick, rank=rank, world=world,
              data=source)
    if rank:
        _train_and_evaluate(run, False)
        return run
    if not resume_dir:
        artifacts.write_text(run_dir / "spec.toml", spec.dumps())
    # The data's folder is kept, so `runner resume` needs no --data.
    artifacts.set_status(run_dir, "running", pid=os.getpid(), quick=quick, data=str(source),
                         overrides=[o.to_json() for o in spec.overrides])
    print(f"[{spec.name}] run folder {run_dir}", file=sys.stderr)
    try:
        _train_and_evaluate(run, sys.stderr.isatty() if show_progress is None else show_progress)
        artifacts.set_status(run_dir, trial.final_status(run))  # "pruned": a search trial its pruner stopped
    except BaseException as exc:
        instead = _record_stop(run, exc)
        if instead is None:
            raise
        raise instead from exc
    finally:
        if run.progress is not None:
            run.progress.close()
    return run


def _record_stop(run: Run, exc: BaseException) -> BaseException | None:
    """Keep the metrics of a run that stopped early and record why in its status.json
    (interrupted, diverged or failed); the error to raise instead of exc, or None to raise exc."""
    _write_partial(run)
    if isinstance(exc, KeyboardInterrupt):
        _mark(run, "interrupted")
        notice(f"[{run.spec.name}] interrupted{_at_iteration(run)}; continue it with: runner resume {run.dir}")
        return None
    if isinstance(exc, DivergedError):
        _mark(run, "diverged", error=str(exc))
        return None
    if isinstance(exc, torch.OutOfMemoryError):
        _mark(run, "failed", error=f"out of memory: {exc}")
        return RunnerError(f"out of memory on {run.device}: lower train.batch_size or eval.batch_size "
                           f"(--set train.batch_size=50), or use a smaller model")
    written = _write_error(exc, run.dir)
    if written is not None:
        return RunnerError(_write_advice(run, written, _mark(run, "failed", error=str(written))))
    _mark(run, "failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
    if isinstance(exc, PluginError) or not isinstance(exc, RunnerError):  # a bug's: where to look
        try:
            # The command line points there; any exception may carry it (RunnerError declares it).
            exc.details = run.dir / artifacts.STATUS_FILE  # type: ignore[attr-defined]
        except AttributeError:  # an exception type with __slots__
            pass
    return None


def _mark(run: Run, status: str, **extra) -> bool:
    """set_status, True if it was written: a status that cannot be must not hide why the run stopped."""
    try:
        artifacts.set_status(run.dir, status, **extra)
        return True
    except artifacts.WriteError:
        return False


def _write_error(exc: BaseException, run_dir: Path) -> "artifacts.WriteError | None":
    """exc as a failed write of a run file: the runner's own (artifacts.WriteError), or a full disk
    under another writer (a plugin's file, raised as it is or as the PluginError's cause)."""
    for error in (exc, exc.__cause__):
        if isinstance(error, artifacts.WriteError):
            return error
        if isinstance(error, OSError) and error.errno in artifacts.DISK_FULL:
            return artifacts.WriteError(Path(error.filename) if error.filename else run_dir / "a run file", error)
    return None


def _write_advice(run: Run, error: "artifacts.WriteError", recorded: bool) -> str:
    """One line: the file and folder, the room the run needs, and what to type next."""
    status = "status.json says failed" if recorded else "status.json could not be written either"
    if not error.disk_full:
        return (f"{error}; make {error.path.parent} writable or give --out a folder you can write to, "
                f"then run it again ({status})")
    return (f"{error}; {_room(run, error.path.parent)}: free some space there and continue with "
            f"`runner resume {run.dir}`, or run it again with --out on a disk with room ({status})")


def _room(run: Run, folder: Path) -> str:
    """'the run needs about 2.4 MB there (model.pt ..., ...) and 180 KB are free'."""
    try:
        free = f"{_size(shutil.disk_usage(folder).free)} are free"
    except OSError:
        free = "the free space is unknown"
    if run.model is None:
        return free + " there"
    model = sum(t.numel() * t.element_size() for t in run.model.state_dict().values())
    # Two checkpoints kept while it trains (if it trains past one), each the weights and as much optimizer state.
    epoch = getattr(getattr(run.trainer, "state", None), "epoch_length", None) or 1
    every = run.spec.train.checkpoint_epochs
    checkpoints = 4 * model if every and run.spec.train.iterations > every * epoch else 0
    rest = 250_000 + 200 * run.spec.train.iterations  # figures, metrics.csv, a plot log
    parts = [f"model.pt {_size(model)}"] + ([f"checkpoints {_size(checkpoints)}"] if checkpoints else [])
    return (f"the run needs about {_size(model + checkpoints + rest)} there ({', '.join(parts)}, "
            f"figures and metrics {_size(rest)}) and {free}")


def _size(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.0f} KB"


def _at_iteration(run: Run) -> str:
    """' at iteration 812 of 2000 (checkpoint at 800)', or '' before training started."""
    state = getattr(run.trainer, "state", None)
    if not state or not state.iteration:
        return ""
    every = run.spec.train.checkpoint_epochs * state.epoch_length
    saved = (state.iteration // every) * every if every else 0
    return (f" at iteration {state.iteration} of {run.spec['train']['iterations']}"
            + (f" (it goes on from the checkpoint at {saved})" if saved else " (no checkpoint yet: it starts over)"))


def _train_and_evaluate(run: Run, interactive: bool) -> None:
    spec, train = run.spec, run.spec.train
    manual_seed(spec.seed)  # plugins' configure hooks ran when the spec loaded
    assert run.data is not None  # execute() resolved it before the run began

    (run.train_images, run.train_labels, run.test_images, run.test_labels,
     run.class_names) = load_data(spec, run.data, run.device)
    searching = trial.SearchRun.from_environment(run)  # a trial of `runner SPEC --search`, else None
    if searching:
        searching.hold_out()  # before the transforms, whose statistics come from the training images
    run.train_pipeline, run.eval_pipeline = build_transforms(spec, run.catalogue, run.train_images)
    run.train_pipeline.to(run.device)
    memory_format = torch.channels_last if train["channels_last"] else torch.contiguous_format
    base = sources.source_model(run)  # another run's trained model, where a plugin names one
    # Module.to takes memory_format (torch's docs), though its typed overloads leave it out.
    run.model = build_model(spec, run.catalogue, run, base).to(  # type: ignore[call-overload]
        run.device, memory_format=memory_format)
    build_engines(run)

    assert run.train_images is not None and run.train_labels is not None  # loaded (and held out) above
    batches = EpochBatches(run.train_images, run.train_labels, train["batch_size"], shuffle=True,
                           shard=(run.rank, run.world))
    run.metrics = MetricsLog(train["iterations"], run.device, window=len(batches))
    handlers.record_metrics(run)
    if run.rank == 0:
        handlers.show_progress(run, interactive)
    handlers.attach_plugins(run)
    if searching:
        searching.attach()
    resumed_at = checkpoint.attach(run)
    setup_seconds = time.perf_counter() - run.started

    other_work = OtherWork()
    train_seconds = _train(run, batches, resumed_at)
    other_cores = other_work.cores()
    eval_seconds = _evaluate(run)
    if run.rank:
        return  # rank 0 writes the results

    _summarize(run, train_seconds, eval_seconds, setup_seconds)
    # Cores other processes kept busy while it trained: its seconds are a quiet machine's only near 0.
    run.results["other_work_cores"] = other_cores
    run.hooks.run_finished(run=run, results=run.results)
    # This process's time on the run, attacks and other run_finished work included: what --jobs
    # schedules by (a resumed run counts from its resumption).
    run.results["wall_seconds"] = round(time.perf_counter() - run.started, 3)
    _write_outputs(run)
    figure = headline(run.results)  # an attack's own result, not its source model's accuracy
    assert figure is not None  # _summarize recorded test_accuracy
    work = "train" if figure.name == "test accuracy" else "took"
    rate = f" ({figure.per_second:.0f} images/s)" if figure.per_second else ""
    print(f"[{spec.name}] {figure.text()}  {work} {figure.seconds or 0:.1f}s{rate}  -> {run.dir}", file=sys.stderr)


def _train(run: Run, batches, resumed_at: int) -> float:
    """Train to train.iterations; the seconds it took (a resumed run's include those before)."""
    iterations = run.spec.train.iterations
    assert run.metrics is not None  # made before training starts
    started = time.perf_counter()
    if iterations and resumed_at < iterations:
        # Training batches all have one shape, so cuDNN's per-shape kernel search pays off; it
        # stays off otherwise: an attack's shrinking batches would trigger a search at every step.
        torch.backends.cudnn.benchmark = run.device.type == "cuda"
        try:
            run.trainer.run(batches, max_iters=None if resumed_at else iterations)
        finally:
            torch.backends.cudnn.benchmark = False
    _sync(run.device)
    return time.perf_counter() - started + run.metrics.seconds_before_resume


def _evaluate(run: Run) -> float:
    """Accuracy and confusion matrix on the test set; the seconds it took. Every process evaluates
    the whole test set with the same weights (and rank 0's BatchNorm statistics, which
    DistributedDataParallel broadcasts), so no gathering is needed."""
    assert run.test_images is not None and run.test_labels is not None  # loaded before training
    started = time.perf_counter()
    run.evaluator.run(EpochBatches(run.test_images, run.test_labels, run.spec.eval.batch_size, shuffle=False))
    return time.perf_counter() - started


def _summarize(run: Run, train_seconds: float, eval_seconds: float, setup_seconds: float) -> None:
    """What summary.json says of the run, before plugins add theirs."""
    assert run.metrics is not None and run.model is not None  # built before training
    spec, train, done = run.spec, run.spec.train, run.metrics.done
    table = run.metrics.table()
    run.results.update({
        "spec": spec.name,
        "spec_file": str(spec.path.resolve()),  # the report finds the spec's explanation beside it, from anywhere
        "seed": spec.seed,
        "overrides": [o.to_json() for o in spec.overrides],  # each with its origin: runner/spec/overrides.py
        "quick": run.quick,
        "iterations": done,
        "batch_size": train["batch_size"],
        "test_accuracy": run.evaluator.state.metrics["accuracy"],
        "final_running_train_accuracy": table["running_accuracy"][-1] if done else None,
        "final_loss": table["loss"][-1] if done else None,
        "seconds": round(train_seconds, 3),
        "eval_seconds": round(eval_seconds, 3),
        "setup_seconds": round(setup_seconds, 3),  # data, model, plugins (and CUDA's start) before training
        "images_per_second": round(done * train["batch_size"] / train_seconds, 1) if done else None,
        "device": device_name(run.device),
        "compiled": train["compile"],
        "threads": torch.get_num_threads(),
        "processes": run.world,
        "nodes": _nodes(run.world),
        "torch": torch.__version__,
        "parameters": sum(p.numel() for p in run.model.parameters()),
        "fingerprint": fingerprint(spec),
        "code_version": code_version(),
        # Rows: true class, columns: predicted; each class's accuracy from it (the report's per-class tables).
        "per_class": per_class(run.evaluator.state.metrics.get("confusion_matrix"), run.class_names),
    })


def _write_outputs(run: Run) -> None:
    assert run.metrics is not None and run.model is not None and run.eval_pipeline is not None  # built before training
    table = run.metrics.table()
    artifacts.write_text(run.dir / "metrics.csv", run.metrics.to_csv())
    artifacts.save_torch(run.dir / "model.pt", {
        "model": run.model.state_dict(),
        "eval_pipeline": run.eval_pipeline.state_dict(),
        "class_names": run.class_names,
    })
    if run.metrics.done:
        figure = figures.training_accuracy(table, f"{run.spec.name} (seed {run.spec['seed']})",
                                           run.results.get("test_accuracy"))
        artifacts.save_figure(run.dir / "training_accuracy.png", figure)
        figures.close(figure)
        if run.results["per_class"]:  # an evaluate-only run's matrix is its source model's
            figure = figures.confusion_matrix(run.results["per_class"]["confusion_matrix"], run.class_names,
                                              f"{run.spec.name} (seed {run.spec['seed']}): test images")
            artifacts.save_figure(run.dir / "confusion_matrix.png", figure)
            figures.close(figure)
    artifacts.write_json(run.dir / "summary.json", run.results)
    checkpoint.remove(run.dir)  # model.pt holds the result; the checkpoints were for resuming


def resume(run_dir, catalogue: Catalogue, *, data: str | DataSource | None = None, show_progress=None) -> Run:
    """Continue an unfinished run in its own folder, with the spec it was started with."""
    from ..spec.loading import load

    run_dir = Path(run_dir)
    status = artifacts.read_status(run_dir)
    if status["status"] == "complete":
        raise RunnerError(f"{run_dir} is already complete; nothing to resume")
    if status["status"] == "running":  # read_status saw its process alive: two would write one folder
        raise RunnerError(f"{run_dir} is still running (process {status.get('pid')}); stop it first, or wait")
    if not (run_dir / "spec.toml").is_file():
        raise RunnerError(f"{run_dir} is not a run folder (no spec.toml)")
    spec = load(run_dir / "spec.toml", catalogue)
    return execute(spec, catalogue, out=run_dir.parent.parent, data=data or status.get("data"),
                   quick=bool(status.get("quick")), show_progress=show_progress, resume_dir=run_dir)


def _write_partial(run: Run) -> None:
    """Keep the metrics of a run that stopped early; never a summary, so it cannot pass as complete."""
    if run.metrics is not None and run.metrics.done:
        try:
            artifacts.write_text(run.dir / "metrics.csv", run.metrics.to_csv())
        except Exception:  # the original error matters more than this one
            pass


def _nodes(world: int) -> int:
    """Machines the run's processes ran on (torchrun across nodes; 1 for one process or --nproc-per-node)."""
    if world == 1:
        return 1
    import ignite.distributed as idist

    return idist.get_nnodes()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
