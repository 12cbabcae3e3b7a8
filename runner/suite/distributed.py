"""One spec trained data-parallel in several processes, through ignite.distributed.

Two ways in, one training loop (run.execute with this process's rank and the world size):

- `runner SPEC --nproc-per-node N` on one machine: execute_distributed spawns the N processes
  and makes the run folder before they start.
- torchrun, on one machine or across several (under SLURM, say): torchrun starts every process
  and sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; each process runs the
  same command and joins the others through env:// (execute_under_torchrun). Rank 0 picks the
  run folder (a fresh one, or with --resume the unfinished run to continue) and tells the others.

Every process takes batch_size / world of every batch and gradients are averaged
(DistributedDataParallel), so the run follows the spec's recipe whatever the number of processes.
Only rank 0 writes the run folder; on several machines --out must be a folder they all see for
--resume (every process reads the checkpoint), and the data must be where each machine looks.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any, cast

import torch

from .. import artifacts, errors
from ..data import resolve as resolve_data
from ..errors import RunnerError
from ..plugin_host.catalogue import Catalogue
from ..spec.loading import Spec
from ..training.builders import resolve_device
from ..training.checkpoint import latest as latest_checkpoint
from ..training.flow import execute

# What torchrun (torch.distributed.run) sets in every process it starts.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def launched_by_torchrun() -> bool:
    """Whether this process is one of several that torchrun (or SLURM with the same variables) started."""
    return all(os.environ.get(name) for name in TORCHRUN_VARIABLES)


def backend_for(spec: Spec) -> str:
    """The collective backend: nccl between GPUs, gloo between CPU processes."""
    return "nccl" if resolve_device(spec.device).type == "cuda" else "gloo"


def _check_trainable(spec: Spec, world: int, option: str) -> None:
    if spec.train.iterations == 0:
        raise RunnerError(f"{spec.name} trains nothing (train.iterations = 0): {option} is for training")
    if spec.train.batch_size % world:
        raise RunnerError(f"train.batch_size {spec['train']['batch_size']} must divide by {option} {world}")


def execute_distributed(spec: Spec, nproc: int, *, out="artifacts", data=None, quick=False) -> dict:
    """Data-parallel training of one spec in nproc processes on this machine (ignite.distributed:
    gloo on CPU, nccl on GPUs, one GPU per process). Each process takes batch_size / nproc images
    of every batch; gradients are averaged, so the run follows the same recipe. Returns the summary.
    """
    import pickle
    import tempfile

    import ignite.distributed as idist

    _check_trainable(spec, nproc, "--nproc-per-node")
    device = resolve_device(spec.device)
    if device.type == "cuda" and nproc > torch.cuda.device_count():
        raise RunnerError(f"--nproc-per-node {nproc} needs {nproc} GPUs; torch sees {torch.cuda.device_count()}")
    # Find (and unpack) the data here, once: missing data fails before any process starts, and
    # the processes do not race to unpack the same cache.
    data = resolve_data(data, spec)
    run_dir = artifacts.new_run_dir(Path(out), spec.name, spec.seed)
    # Ignite's default rendezvous port is a fixed 2222: a second data-parallel run on this machine,
    # or a rerun while the last one's port lingers, would fail to meet there. MASTER_PORT still wins.
    port = None if os.environ.get("MASTER_PORT") else _free_port()
    with tempfile.TemporaryDirectory(prefix="runner-errors-") as errors_dir:
        try:
            with idist.Parallel(backend=backend_for(spec), nproc_per_node=nproc, master_port=port) as parallel:
                parallel.run(_distributed_worker, spec, run_dir, data, quick, Path(errors_dir))
        except Exception as exc:  # torch.multiprocessing's: it carries a process's traceback as text only
            # The failed process left its RunnerError: raise that (the lowest rank's), so the
            # command reports it, and exits with its code, as a run in one process would.
            for path in sorted(Path(errors_dir).iterdir(), key=lambda path: int(path.stem)):
                try:
                    cls, args, state = pickle.loads(path.read_bytes())
                except Exception:  # a class this process cannot import (a plugin file's, say): the traceback
                    continue
                error = cls.__new__(cls)
                error.args = args
                error.__dict__.update(state)
                raise error from exc
            raise
    summary = artifacts.read_summary(run_dir)
    if not summary:
        raise RunnerError(f"the data-parallel run in {run_dir} did not finish; see its status.json")
    return summary


def _free_port() -> int:
    """A TCP port that nothing on this machine listens on now."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _distributed_worker(local_rank: int, spec: Spec, run_dir: Path, data, quick: bool, errors_dir: Path) -> None:
    import pickle

    import ignite.distributed as idist

    _share_cores(idist.get_nproc_per_node())
    if idist.get_rank():  # live plots from one process are enough
        _no_live_plots(spec)
    try:
        catalogue = Catalogue.default()
        catalogue.add_spec_files(spec.path, spec.values)
        execute(spec, catalogue, run_dir=run_dir, data=data, quick=quick, show_progress=False,
                rank=idist.get_rank(), world=idist.get_world_size())
        _free_data_parallel_model()
    except RunnerError as exc:
        # Left for execute_distributed to raise again: the parent gets only a traceback's text. Not
        # pickled whole, as unpickling would call __init__ with args (SpecError's rewords them).
        with contextlib.suppress(Exception):  # state that cannot be pickled: the traceback it is
            state = pickle.dumps((type(exc), exc.args, exc.__dict__))
            (errors_dir / f"{idist.get_rank()}.pickle").write_bytes(state)
        raise


def _free_data_parallel_model() -> None:
    """Free the finished run's DistributedDataParallel now. It holds the process group, and the
    run's engines hold it in reference cycles, so it would otherwise go at the interpreter's exit,
    after ignite destroyed the group: gloo's teardown then can abort the process (SIGABRT,
    'terminate called without an active exception') after a run that succeeded."""
    import gc

    gc.collect()


def _share_cores(processes_here: int) -> None:
    from .executors import threads_per_process

    threads = threads_per_process(processes_here)
    if threads:  # the processes of this node share its cores instead of each spinning on all of them
        torch.set_num_threads(threads)


def _no_live_plots(spec: Spec) -> None:
    spec.values.get("plugins", {}).get("visdom", {})["enabled"] = False


def execute_under_torchrun(specs: list[Spec], *, out="artifacts", data=None, quick=False,
                           resume=False) -> list[dict]:
    """Train each spec in turn data-parallel across the processes torchrun started, this one among
    them; returns their summaries (every process gets rank 0's). A failed run raises: the other
    processes are then waiting inside a collective, and torchrun stops them all."""
    import ignite.distributed as idist

    world = int(os.environ["WORLD_SIZE"])
    for spec in specs:
        _check_trainable(spec, world, "WORLD_SIZE (torchrun's processes)")
    backends = {backend_for(spec) for spec in specs}
    if len(backends) > 1:
        raise RunnerError("under torchrun every spec must run on the same device kind (cuda or cpu); "
                          "use --device, or one torchrun per device kind")
    summaries: list[dict] = []
    # Inside a SLURM job ignite would take the ranks from SLURM's variables, which count srun's
    # tasks (one torchrun per node), not torchrun's processes, and refuse to start: torchrun's count.
    with _hidden("SLURM_JOB_ID"), idist.Parallel(backend=backends.pop()) as parallel:
        parallel.run(_torchrun_worker, specs, out, data, quick, resume, summaries)
    return summaries


@contextlib.contextmanager
def _hidden(variable: str):
    """The environment variable unset inside the block, as it was after it."""
    value = os.environ.pop(variable, None)
    try:
        yield
    finally:
        if value is not None:
            os.environ[variable] = value


def _torchrun_worker(local_rank: int, specs: list[Spec], out, data, quick: bool, resume: bool,
                     summaries: list) -> None:
    import ignite.distributed as idist

    rank, world = idist.get_rank(), idist.get_world_size()
    _share_cores(idist.get_nproc_per_node())
    if rank == 0:
        print(f"[torchrun] {world} processes on {idist.get_nnodes()} nodes ({idist.backend()})", file=sys.stderr)
    for spec in specs:
        if rank:
            _no_live_plots(spec)
        run_dir, resuming = _agree_on_run_dir(spec, out, data, quick, resume)
        catalogue = Catalogue.default()
        catalogue.add_spec_files(spec.path, spec.values)
        execute(spec, catalogue, out=out, data=data, quick=quick, show_progress=False,
                run_dir=None if resuming else run_dir, resume_dir=run_dir if resuming else None,
                rank=rank, world=world)
        _free_data_parallel_model()
        summary = artifacts.read_summary(run_dir) if rank == 0 else None
        summaries.append(_from_rank_0(summary))


def _agree_on_run_dir(spec: Spec, out, data, quick: bool, resume: bool) -> tuple[Path, bool]:
    """The run folder every process uses, chosen by rank 0, and whether the run resumes there.

    Every process checks what it needs before any trains, so a problem on one machine (its data
    missing, a checkpoint it cannot see) stops all of them with the same error instead of leaving
    the others waiting in a collective until a timeout."""
    import ignite.distributed as idist

    rank = idist.get_rank()

    def find_data():
        if idist.get_local_rank() == 0:  # once per machine: its processes would unpack the same cache
            resolve_data(data, spec)

    choice = {}

    def choose():  # after the data check: a run that cannot start leaves no empty folder
        if rank == 0:
            choice.update(_choose_run_dir(spec, out, quick, resume))

    _check_everywhere(find_data)
    _check_everywhere(choose)
    choice = _from_rank_0(choice)
    run_dir, resuming = Path(choice["run_dir"]), choice["resuming"]

    def sees_checkpoint():
        if choice["checkpoint"] and not Path(choice["checkpoint"]).is_file():
            raise RunnerError(f"cannot see {choice['checkpoint']}, which rank 0 resumes from: put --out on a "
                              f"filesystem every node shares, or run without --resume")

    _check_everywhere(sees_checkpoint)
    return run_dir, resuming


def _from_rank_0(value: Any) -> Any:
    """Rank 0's `value` in every process (through JSON, a string being what idist broadcasts as is)."""
    import ignite.distributed as idist

    return json.loads(cast(str, idist.broadcast(json.dumps(value), src=0, safe_mode=True)))


def _check_everywhere(check) -> None:
    """check() in every process; when it raised a RunnerError in any, the lowest rank's is raised in all."""
    import ignite.distributed as idist

    problem = None
    try:
        check()
    except RunnerError as exc:
        problem = {"rank": idist.get_rank(), "kind": type(exc).__name__, "message": str(exc)}
    _raise_first(cast(list[str], idist.all_gather(json.dumps(problem))))  # all_gather of a str: a list of str


def _choose_run_dir(spec: Spec, out, quick: bool, resume: bool) -> dict:
    """Rank 0's choice: with resume, the spec's latest unfinished run of this seed and --quick made
    from the same spec (as `runner SPEC --resume` in one process), else a fresh folder."""
    from .executors import resumable
    from .plan import RunOptions

    options = RunOptions(out=str(out), quick=bool(quick))
    unfinished = resumable(spec, options, Catalogue.default()) if resume else None  # says why not, if not
    if unfinished:
        found = latest_checkpoint(unfinished)
        return {"run_dir": str(unfinished), "resuming": True, "checkpoint": str(found) if found else None}
    return {"run_dir": str(artifacts.new_run_dir(Path(out), spec.name, spec.seed)), "resuming": False,
            "checkpoint": None}


def _raise_first(gathered: list[str]) -> None:
    """Raise the lowest rank's problem, if any process had one, in every process, with its exit code."""
    problems = [json.loads(text) for text in gathered if text != "null"]
    if problems:
        first = min(problems, key=lambda problem: problem["rank"])
        cls = getattr(errors, first["kind"], None)
        cls = cls if isinstance(cls, type) and issubclass(cls, RunnerError) else RunnerError
        error = cls.__new__(cls)  # SpecError's __init__ would reword a message that is final already
        error.args = (first["message"] if first["rank"] == 0 else f"process {first['rank']}: {first['message']}",)
        raise error


class DataParallel:
    """An executor (runner/suite/executors.py) that trains each job in turn data-parallel: in `nproc`
    processes started here, or, under torchrun, in the processes torchrun started, this one among
    them. A failure ends the command, as torchrun ends every process when one fails."""

    def __init__(self, nproc: int, catalogue):
        self.nproc, self.catalogue = nproc, catalogue

    def run(self, plan, options, on_event) -> list:
        from .plan import Outcome, load_spec

        specs = [load_spec(job.path, self.catalogue, job.overrides) for job in plan.jobs]
        if launched_by_torchrun():
            summaries = execute_under_torchrun(specs, out=options.out, data=options.data, quick=options.quick,
                                               resume=options.resume)
        else:
            if options.resume:
                raise RunnerError("--nproc-per-node runs one spec at a time and from the start: drop --resume")
            summaries = [execute_distributed(spec, self.nproc, out=options.out, data=options.data,
                                             quick=options.quick) for spec in specs]
        outcomes = [Outcome(job, "ran", summary) for job, summary in zip(plan.jobs, summaries)]
        for outcome in outcomes:
            on_event("finished", outcome.job, outcome)
        return outcomes
