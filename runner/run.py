"""One run of one spec, start to finish: the flow every plugin hooks into.

seed -> configure -> data -> transforms -> model (+ change_model) -> trainer/evaluator
(+ attach) -> train -> evaluate -> run_finished -> artifacts.
"""
from __future__ import annotations

import logging
import math
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Events
from ignite.utils import manual_seed
from torch import nn

from . import artifacts, data, figures
from .engine import (EpochBatches, create_evaluator, create_trainer, make_optimizer, make_scheduler,
                     resolve_precision)
from .errors import DataError, DivergedError, RunnerError, SpecError
from .metrics import MetricsLog, per_class
from .plugins import Catalogue, attributed
from .progress import Progress
from .results import headline
from .spec import Spec



@dataclass
class Run:
    """What plugins see of a run: read what you need, add results through `results`."""

    spec: Spec
    catalogue: Catalogue
    device: torch.device
    dir: Path
    quick: bool = False
    model: nn.Module | None = None
    train_pipeline: nn.Module | None = None
    eval_pipeline: nn.Module | None = None
    optimizer: Any = None
    trainer: Any = None
    evaluator: Any = None
    metrics: MetricsLog | None = None
    train_images: torch.Tensor | None = None
    train_labels: torch.Tensor | None = None
    test_images: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None
    class_names: list[str] = field(default_factory=list)
    results: dict = field(default_factory=dict)
    rank: int = 0   # this process in a data-parallel run (--nproc-per-node); 0 writes the artifacts
    world: int = 1  # processes in the run
    started: float = field(default_factory=time.perf_counter)  # for setup_seconds and wall_seconds
    progress: Progress | None = None  # the training display, open while the trainer runs

    def settings(self, plugin: str) -> dict:
        return self.spec["plugins"][plugin]

    def call_plugins(self, hook: str, **kwargs) -> list:
        """Call `hook` on each enabled plugin in the spec's order, each with its own settings."""
        return [self.catalogue.call(name, hook, settings=self.settings(name), **kwargs)
                for name in self.spec.plugin_names()]


def resolve_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise RunnerError("device 'cuda' was asked for but torch sees no CUDA GPU; use --device cpu")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


def build_transforms(spec: Spec, catalogue: Catalogue, train_images: torch.Tensor):
    """The train pipeline (every op, in spec order) and the eval pipeline (train-only ops left out)."""
    train_ops, eval_ops = [], []
    for name in spec["data"]["transforms"]:
        entry = catalogue.transforms[name]
        op = entry.factory(spec["transforms"][name], train_images)
        train_ops.append(op)
        if not entry.train_only:
            eval_ops.append(op)
    return nn.Sequential(*train_ops), nn.Sequential(*eval_ops)


def build_model(spec: Spec, catalogue: Catalogue, run: Run | None = None) -> nn.Module:
    """The spec's model with every enabled plugin's change_model applied in order."""
    params = {k: v for k, v in spec["model"].items() if k != "name"}
    model = catalogue.models[spec["model"]["name"]].factory(**params)
    for name in spec.plugin_names():
        try:
            changed = catalogue.call(name, "change_model", model=model, run=run, settings=spec["plugins"][name])
        except SpecError as exc:
            raise (exc.in_file(spec.origin(exc.key)) if exc.file is None else exc) from exc
        if changed is not None:
            model = changed
    return model


def locate_data(spec: Spec, source: str | None) -> Path:
    """The folder holding CIFAR-10 for a run of spec; a bad data.root is named as the spec's."""
    try:
        return data.locate(data.resolve_source(source, spec["data"]["root"] or None))
    except DataError as exc:
        if data.resolve_source(source, None) is None and spec["data"]["root"]:
            raise DataError(f"{exc} (data.root of {spec.path})") from exc
        raise


def load_data(spec: Spec, source: str | None, device: torch.device):
    directory = locate_data(spec, source)
    train_x, train_y = data.load_batches(directory, spec["data"]["train"])
    test_x, test_y = data.load_batches(directory, spec["data"]["test"])
    if spec["data"]["train_limit"]:
        train_x, train_y = train_x[:spec["data"]["train_limit"]], train_y[:spec["data"]["train_limit"]]
    if spec["data"]["test_limit"]:
        test_x, test_y = test_x[:spec["data"]["test_limit"]], test_y[:spec["data"]["test_limit"]]
    to = lambda t: t.to(device)
    return to(train_x), to(train_y), to(test_x), to(test_y), data.class_names(directory)


def _attach_core(run: Run, show_progress: bool) -> None:
    trainer, metrics, log_every = run.trainer, run.metrics, run.spec["train"]["log_every"]

    @trainer.on(Events.ITERATION_COMPLETED)
    def record(engine):
        out = engine.state.output
        if run.world > 1:  # the whole batch's numbers: every process saw a slice of it
            import ignite.distributed as idist

            totals = idist.all_reduce(torch.stack([out["loss"].float(), out["correct"].float(),
                                                   torch.tensor(float(out["count"]), device=out["loss"].device)]))
            metrics.record(engine.state.iteration, totals[0] / run.world, totals[1], totals[2])
            return
        metrics.record(engine.state.iteration, out["loss"], out["correct"], out["count"])

    @trainer.on(Events.ITERATION_COMPLETED(every=log_every) | Events.COMPLETED)
    def check_and_report(engine):
        # One host read every log_every steps instead of one per step.
        loss = float(engine.state.output["loss"])
        if not math.isfinite(loss):
            raise DivergedError(f"loss became {loss} at iteration {engine.state.iteration}; "
                                "lower train.lr, add warmup (train.warmup) or cap the gradient norm "
                                "(train.clip_grad_norm)")
        engine.state.metrics["loss"] = loss
        engine.state.metrics["accuracy"] = metrics.table_value("running_accuracy", engine.state.iteration)

    if run.rank == 0:
        _attach_progress(run, show_progress)


def _attach_progress(run: Run, interactive: bool) -> None:
    """One display over the whole run (a resumed run's starts where it stopped): a bar in a
    terminal, a line at every tenth otherwise, both with rate, ETA, loss and running accuracy."""
    trainer, total = run.trainer, run.spec["train"]["iterations"]

    @trainer.on(Events.STARTED)
    def open_display(engine):
        run.progress = Progress(total, run.spec.name, unit="it", interactive=interactive,
                                initial=engine.state.iteration)

    @trainer.on(Events.ITERATION_COMPLETED(every=run.spec["train"]["log_every"]) | Events.COMPLETED)
    def advance(engine):
        if engine.state.iteration > run.progress.done:  # COMPLETED right after the last every-th
            run.progress.update(engine.state.iteration - run.progress.done, loss=engine.state.metrics["loss"],
                                accuracy=engine.state.metrics["accuracy"])

    trainer.add_event_handler(Events.COMPLETED, lambda _: run.progress.close())


def _attach_plugins(run: Run) -> None:
    """Each plugin's attach hook, with every handler it adds wrapped so failures name the plugin."""
    for name in run.spec.plugin_names():
        engines = (run.trainer, run.evaluator)
        originals = [engine.add_event_handler for engine in engines]
        for engine, original in zip(engines, originals):
            engine.add_event_handler = (lambda original: lambda event, handler, *a, **k: original(
                event, attributed(handler, name, event), *a, **k))(original)
        try:
            run.catalogue.call(name, "attach", trainer=run.trainer, evaluator=run.evaluator, run=run,
                               settings=run.settings(name))
        finally:
            for engine in engines:
                del engine.add_event_handler


def execute(spec: Spec, catalogue: Catalogue, *, out="artifacts", data_source=None, quick=False,
            show_progress=None, resume_dir=None, run_dir=None, rank=0, world=1) -> Run:
    """Train and evaluate one spec; returns the finished Run (its results and folder).

    With resume_dir, continue that run from its last checkpoint (its own spec.toml is the spec).
    rank/world: this process's place in a data-parallel run (see execute_distributed), whose
    folder run_dir the caller made; only rank 0 writes to it.
    """
    device = resolve_device(spec["device"])
    if rank:
        # This machine's GPU for the process (ignite set it from LOCAL_RANK): across nodes, ranks outnumber GPUs.
        device = torch.device(device.type, torch.cuda.current_device()) if device.type == "cuda" else device
    if not rank:
        # Missing data fails before a run folder exists (or, resuming, before the run is marked
        # running): a resume that finds no data leaves its run interrupted, to be resumed again.
        data_source = str(locate_data(spec, data_source))
    run_dir = Path(resume_dir or run_dir or artifacts.new_run_dir(Path(out), spec.name, spec["seed"]))
    run = Run(spec=spec, catalogue=catalogue, device=device, dir=run_dir, quick=quick, rank=rank, world=world)
    if rank:
        _train_and_evaluate(run, data_source, False)
        return run
    if not resume_dir:
        artifacts.write_text(run_dir / "spec.toml", spec.dumps())
    # The data's folder is kept, so `runner resume` needs no --data.
    artifacts.set_status(run_dir, "running", pid=os.getpid(), quick=quick, data=data_source, overrides=spec.overrides)
    print(f"[{spec.name}] run folder {run_dir}", file=sys.stderr)
    try:
        _train_and_evaluate(run, data_source, sys.stderr.isatty() if show_progress is None else show_progress)
    except KeyboardInterrupt:
        _write_partial(run)
        artifacts.set_status(run_dir, "interrupted")
        print(f"[{spec.name}] interrupted{_at_iteration(run)}; continue it with: runner resume {run_dir}",
              file=sys.stderr)
        raise
    except DivergedError as exc:
        _write_partial(run)
        artifacts.set_status(run_dir, "diverged", error=str(exc))
        raise
    except torch.OutOfMemoryError as exc:
        _write_partial(run)
        artifacts.set_status(run_dir, "failed", error=f"out of memory: {exc}")
        raise RunnerError(f"out of memory on {device}: lower train.batch_size or eval.batch_size "
                          f"(--set train.batch_size=50), or use a smaller model") from exc
    except BaseException as exc:
        _write_partial(run)
        artifacts.set_status(run_dir, "failed", error=f"{type(exc).__name__}: {exc}",
                             traceback=traceback.format_exc())
        try:
            exc.details = run_dir / artifacts.STATUS_FILE  # the command line points there
        except AttributeError:  # an exception type with __slots__
            pass
        raise
    finally:
        if run.progress is not None:
            run.progress.close()
    artifacts.set_status(run_dir, "complete")
    return run


def _at_iteration(run: Run) -> str:
    """' at iteration 812 of 2000 (checkpoint at 800)', or '' before training started."""
    state = getattr(run.trainer, "state", None)
    if not state or not state.iteration:
        return ""
    every = run.spec["train"]["checkpoint_epochs"] * state.epoch_length
    saved = (state.iteration // every) * every if every else 0
    return (f" at iteration {state.iteration} of {run.spec['train']['iterations']}"
            + (f" (it goes on from the checkpoint at {saved})" if saved else " (no checkpoint yet: it starts over)"))


def _train_and_evaluate(run: Run, data_source, show_progress: bool) -> None:
    spec, train = run.spec, run.spec["train"]
    manual_seed(spec["seed"])
    run.call_plugins("configure", spec=spec)

    (run.train_images, run.train_labels, run.test_images, run.test_labels,
     run.class_names) = load_data(spec, data_source, run.device)
    run.train_pipeline, run.eval_pipeline = build_transforms(spec, run.catalogue, run.train_images)
    run.train_pipeline.to(run.device)
    memory_format = torch.channels_last if train["channels_last"] else torch.contiguous_format
    run.model = build_model(spec, run.catalogue, run).to(run.device, memory_format=memory_format)

    run.optimizer = make_optimizer(run.model.parameters(), train)
    scheduler = make_scheduler(run.optimizer, train)
    precision = resolve_precision(train["precision"], run.device)
    # The wrappers (DistributedDataParallel, compiled) only run forward passes; run.model stays
    # the plain module, so its state_dict, checkpoints and plugins see the usual parameter names.
    forward = run.model
    if run.world > 1:
        # Averages gradients across processes during backward; starts every copy from rank 0's weights.
        forward = nn.parallel.DistributedDataParallel(run.model, device_ids=[run.device.index]
                                                      if run.device.type == "cuda" else None)
    if train["compile"]:
        forward = torch.compile(forward, mode=None if train["compile"] is True else train["compile"])
    run.trainer = create_trainer(run.model, run.optimizer, scheduler, run.train_pipeline,
                                 label_smoothing=train["label_smoothing"], channels_last=train["channels_last"],
                                 precision=precision, forward=forward, clip_grad_norm=train["clip_grad_norm"])
    run.evaluator = create_evaluator(run.model, run.eval_pipeline, num_classes=len(run.class_names),
                                     channels_last=train["channels_last"], precision=precision, forward=forward)
    for engine in (run.trainer, run.evaluator):
        # Ignite logs every exception before raising it; the command line reports it once, itself.
        engine.logger.setLevel(logging.CRITICAL)
    batches = EpochBatches(run.train_images, run.train_labels, train["batch_size"], shuffle=True,
                           shard=(run.rank, run.world))
    run.metrics = MetricsLog(train["iterations"], run.device, window=len(batches))
    _attach_core(run, show_progress)
    _attach_plugins(run)
    resumed_at = _checkpointing(run, scheduler)

    setup_seconds = time.perf_counter() - run.started
    started = time.perf_counter()
    if train["iterations"] and resumed_at < train["iterations"]:
        # Training batches all have one shape, so cuDNN's per-shape kernel search pays off; it
        # stays off otherwise: an attack's shrinking batches would trigger a search at every step.
        torch.backends.cudnn.benchmark = run.device.type == "cuda"
        try:
            run.trainer.run(batches, max_iters=None if resumed_at else train["iterations"])
        finally:
            torch.backends.cudnn.benchmark = False
    _sync(run.device)
    train_seconds = time.perf_counter() - started + run.metrics.seconds_before_resume

    started = time.perf_counter()
    # Every process evaluates the whole test set with the same weights (and rank 0's BatchNorm
    # statistics, which DistributedDataParallel broadcasts), so no gathering is needed.
    run.evaluator.run(EpochBatches(run.test_images, run.test_labels, spec["eval"]["batch_size"], shuffle=False))
    eval_seconds = time.perf_counter() - started
    if run.rank:
        return  # rank 0 writes the results

    table = run.metrics.table()
    run.results.update({
        "spec": spec.name,
        "spec_file": str(spec.path.resolve()),  # the report finds the spec's explanation beside it, from anywhere
        "seed": spec["seed"],
        "overrides": list(spec.overrides),  # the --set texts (seed, --quick's, a sweep's value) it was run with
        "quick": run.quick,
        "iterations": run.metrics.done,
        "batch_size": train["batch_size"],
        "test_accuracy": run.evaluator.state.metrics["accuracy"],
        "final_running_train_accuracy": table["running_accuracy"][-1] if run.metrics.done else None,
        "final_loss": table["loss"][-1] if run.metrics.done else None,
        "seconds": round(train_seconds, 3),
        "eval_seconds": round(eval_seconds, 3),
        "setup_seconds": round(setup_seconds, 3),  # data, model, plugins (and CUDA's start) before training
        "images_per_second": round(run.metrics.done * train["batch_size"] / train_seconds, 1) if run.metrics.done else None,
        "device": _device_name(run.device),
        "precision": precision,
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
    if run.metrics.done and run.results["per_class"]:  # an evaluate-only run's matrix is its source model's
        figure = figures.confusion_matrix(run.results["per_class"]["confusion_matrix"], run.class_names,
                                          f"{spec.name} (seed {spec['seed']}): test images")
        artifacts.save_figure(run.dir / "confusion_matrix.png", figure)
        figures.close(figure)
    run.call_plugins("run_finished", run=run, results=run.results)
    # This process's time on the run, attacks and other run_finished work included: what --jobs
    # schedules by (a resumed run counts from its resumption).
    run.results["wall_seconds"] = round(time.perf_counter() - run.started, 3)
    _write_outputs(run, table)
    figure = headline(run.results)  # an attack's own result, not its source model's accuracy
    work = "train" if figure.name == "test accuracy" else "took"
    rate = f" ({figure.per_second:.0f} images/s)" if figure.per_second else ""
    print(f"[{spec.name}] {figure.text()}  {work} {figure.seconds or 0:.1f}s{rate}  -> {run.dir}", file=sys.stderr)


CHECKPOINT = "checkpoint.pt"


def _checkpointing(run: Run, scheduler) -> int:
    """Save a checkpoint at every k-th epoch end; restore one if the run folder has it.

    Checkpoints sit at epoch boundaries, where the next epoch's permutation is drawn from the
    restored RNG state: a resumed run continues exactly as an uninterrupted one would.
    Returns the iteration the run resumes from (0 for a fresh run).
    """
    every = run.spec["train"]["checkpoint_epochs"]
    objects = {"model": run.model, "optimizer": run.optimizer, "metrics": run.metrics}
    if scheduler is not None:
        objects["scheduler"] = scheduler
    path = run.dir / CHECKPOINT

    if every and run.rank == 0:
        @run.trainer.on(Events.EPOCH_COMPLETED(every=every))
        def save(engine):
            if engine.state.iteration >= run.spec["train"]["iterations"]:
                return  # the run is about to finish; model.pt follows
            state = {name: obj.state_dict() for name, obj in objects.items()}
            state["trainer"] = {"iteration": engine.state.iteration, "epoch_length": engine.state.epoch_length,
                                "max_iters": run.spec["train"]["iterations"]}
            state["rng"] = torch.get_rng_state()
            state["cuda_rng"] = torch.cuda.get_rng_state_all() if run.device.type == "cuda" else None
            state["seconds"] = run.metrics.seconds_before_resume + time.perf_counter() - run.metrics.started
            artifacts.save_torch(path, state)

    run.metrics.started = time.perf_counter()
    if not path.exists():
        return 0
    state = torch.load(path, map_location=run.device, weights_only=False)
    for name, obj in objects.items():
        obj.load_state_dict(state[name])
    run.trainer.load_state_dict(state["trainer"])
    torch.set_rng_state(state["rng"])
    if state["cuda_rng"] is not None:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    run.metrics.seconds_before_resume = state["seconds"]
    print(f"[{run.spec.name}] resumed at iteration {state['trainer']['iteration']}", file=sys.stderr)
    return state["trainer"]["iteration"]


def code_version() -> str:
    """A hash of the runner's and built-in plugins' source: a run made by other code is not up to date."""
    import hashlib

    digest = hashlib.sha256()
    root = Path(__file__).resolve().parent.parent
    for folder in ("runner", "plugins"):
        for path in sorted((root / folder).glob("*.py")):
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def fingerprint(spec: Spec) -> str:
    """What makes two runs the same experiment: the resolved spec and the code."""
    import hashlib

    return hashlib.sha256((spec.dumps() + code_version()).encode()).hexdigest()[:16]


def _write_outputs(run: Run, table: dict) -> None:
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
    artifacts.write_json(run.dir / "summary.json", run.results)
    (run.dir / CHECKPOINT).unlink(missing_ok=True)  # model.pt holds the result; the checkpoint was for resuming


def resume(run_dir, catalogue: Catalogue, *, data_source=None, show_progress=None) -> Run:
    """Continue an unfinished run in its own folder, with the spec it was started with."""
    from .spec import load

    run_dir = Path(run_dir)
    status = artifacts.read_status(run_dir)
    if status["status"] == "complete":
        raise RunnerError(f"{run_dir} is already complete; nothing to resume")
    if status["status"] == "running":  # read_status saw its process alive: two would write one folder
        raise RunnerError(f"{run_dir} is still running (process {status.get('pid')}); stop it first, or wait")
    if not (run_dir / "spec.toml").is_file():
        raise RunnerError(f"{run_dir} is not a run folder (no spec.toml)")
    spec = load(run_dir / "spec.toml", catalogue)
    return execute(spec, catalogue, out=run_dir.parent.parent, data_source=data_source or status.get("data"),
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


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def load_trained(run_dir, catalogue: Catalogue | None = None, device="cpu") -> tuple[nn.Module, Spec]:
    """A finished run's model with its evaluation transforms in front: takes pixel values 0-255."""
    from .spec import load

    run_dir = Path(run_dir)
    catalogue = catalogue or Catalogue.default()
    spec = load(run_dir / "spec.toml", catalogue)
    state = torch.load(run_dir / "model.pt", map_location=device, weights_only=True)
    model = build_model(spec, catalogue)
    model.load_state_dict(state["model"])
    # Transforms are rebuilt from placeholder statistics, then their saved buffers restore the real ones.
    placeholder = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    placeholder[1] = 255
    _, pipeline = build_transforms(spec, catalogue, placeholder)
    pipeline.load_state_dict(state["eval_pipeline"])
    # In the memory format it trained in: on the CPU channels_last runs its convolutions 1.2-1.5x
    # faster (inference on 1,000 test images: Table 1 net 539 -> 448 ms, all-conv 788 -> 535 ms).
    memory_format = torch.channels_last if spec["train"]["channels_last"] else torch.contiguous_format
    return nn.Sequential(pipeline, model).to(device, memory_format=memory_format).eval(), spec
