"""Resumable runs: ignite's Checkpoint at epoch ends, with the random state beside the weights.

A checkpoint holds the model, optimizer, schedule, trainer (iteration), metrics so far, training
seconds so far and torch's random state. It is saved at an epoch's end, where the next epoch's
permutation is drawn from that random state, so a resumed run continues exactly as an
uninterrupted one would (tests/test_resume.py compares them byte for byte).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from ignite.engine import Events
from ignite.handlers import Checkpoint, DiskSaver

from .. import artifacts
from ..errors import RunnerError

PATTERN = "checkpoint_*.pt"


class Saver(DiskSaver):
    """ignite's DiskSaver (atomic), whose failed write names the checkpoint file, as the run's own
    writes do (artifacts.WriteError)."""

    def __call__(self, checkpoint, filename, metadata=None) -> None:
        try:
            super().__call__(checkpoint, filename, metadata)
        except OSError as exc:
            raise artifacts.WriteError(Path(self.dirname) / filename, exc) from exc


class RandomState:
    """torch's generator states (CPU, and CUDA on a GPU run) as a checkpointable object."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def state_dict(self) -> dict:
        return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if self.cuda else []}

    def load_state_dict(self, state: dict) -> None:
        torch.set_rng_state(state["cpu"])
        if state["cuda"]:
            torch.cuda.set_rng_state_all(state["cuda"])


class TrainingClock:
    """Training seconds before this process took over, so a resumed run's time adds up."""

    def __init__(self, metrics):
        self.metrics = metrics

    def state_dict(self) -> dict:
        return {"seconds": self.metrics.seconds_before_resume + time.perf_counter() - self.metrics.started}

    def load_state_dict(self, state: dict) -> None:
        self.metrics.seconds_before_resume = state["seconds"]


def latest(run_dir) -> Path | None:
    """The run folder's checkpoint (the newest, should a crash have left two)."""
    found = sorted(Path(run_dir).glob(PATTERN), key=lambda path: int(path.stem.rsplit("_", 1)[1]))
    return found[-1] if found else None


def remove(run_dir) -> None:
    for path in Path(run_dir).glob(PATTERN):
        path.unlink(missing_ok=True)


def attach(run) -> int:
    """Save a checkpoint at every k-th epoch end (train.checkpoint_epochs) but the last; restore the
    run folder's checkpoint if it has one. Returns the iteration the run goes on from (0: fresh)."""
    every, total = run.spec.train.checkpoint_epochs, run.spec.train.iterations
    objects = {"model": run.model, "optimizer": run.optimizer, "trainer": run.trainer, "metrics": run.metrics,
               "random": RandomState(run.device), "clock": TrainingClock(run.metrics)}
    if run.scheduler is not None:
        objects["scheduler"] = run.scheduler
    if every and run.rank == 0:
        # Two kept: Checkpoint removes the oldest before it writes the next, so with one a Ctrl-C
        # during that write would leave none (the write itself is atomic: a file there is whole).
        saver = Checkpoint(objects, Saver(run.dir, require_empty=False, atomic=True), n_saved=2,
                           global_step_transform=lambda engine, event: engine.state.iteration)
        # Not after the last epoch: model.pt follows at once.
        at = Events.EPOCH_COMPLETED(event_filter=lambda engine, epoch: epoch % every == 0
                                    and engine.state.iteration < total)
        run.trainer.add_event_handler(at, saver)
    run.metrics.started = time.perf_counter()
    path = latest(run.dir)
    if path is None:
        return 0
    Checkpoint.load_objects(objects, _load(path, run.device))
    print(f"[{run.spec.name}] resumed at iteration {run.trainer.state.iteration}", file=sys.stderr)
    return run.trainer.state.iteration


def _load(path: Path, device) -> dict:
    """A checkpoint's objects; a file cut short or overwritten is an error that says what to do."""
    try:
        # Written by this program (RNG states, metrics lists): not only tensors, so not weights_only.
        return torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:
        older = "the one before it" if len(list(path.parent.glob(PATTERN))) > 1 else "the start"
        raise RunnerError(
            f"{path} is unreadable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'cut short'}); "
            f"delete it and resume from {older} (rm {path} && runner resume {path.parent}), "
            f"or run the spec afresh (runner SPEC --force)") from exc
