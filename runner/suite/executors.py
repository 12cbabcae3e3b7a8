"""Run a Plan: one interface, `run(plan, options, on_event) -> [Outcome]`, several executors.

- InProcess: the jobs one after another in this process (a single run, or no --jobs).
- ProcessPool: up to N jobs at once in N warm worker processes (runner/suite/worker.py), each calling
  the run API (run_job, below) and sending back its Outcome. One small CIFAR-10 run leaves a GPU
  mostly idle, so runs side by side finish a suite several times sooner; on a CPU the workers
  share out the cores.
- runner/suite/distributed.py trains one job data-parallel; runner/suite/dask_executor.py runs a plan on a
  Dask cluster.

Every executor starts a job once all jobs of the specs it requires have completed, and reports a
job whose requirement failed as not run. on_event(kind, job, outcome) is called with "started"
(outcome None) and "finished" as jobs go: the suite's progress display.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Callable, Iterable, Protocol

from .. import artifacts
from ..errors import DataError, DivergedError, RunnerError
from .plan import Job, Outcome, Plan, RunOptions, job_to_json, load_spec

POLL_SECONDS = 0.2

OnEvent = Callable[[str, Job, "Outcome | None"], None]


class Executor(Protocol):
    def run(self, plan: Plan, options: RunOptions, on_event: OnEvent) -> list[Outcome]: ...


class InProcess:
    """The jobs in the plan's order, one at a time, in this process."""

    def __init__(self, catalogue=None):
        self.catalogue = catalogue

    def run(self, plan: Plan, options: RunOptions, on_event: OnEvent) -> list[Outcome]:
        outcomes: list[Outcome] = []
        failed: set[str] = set()
        for job in plan.jobs:
            if job.requires & failed:
                outcome = blocked_outcome(job, job.requires & failed)
            elif outcomes and stops_everything(outcomes[-1]):
                outcome = blocked_outcome(job, {outcomes[-1].job.name})
            else:
                on_event("started", job, None)
                outcome = run_job(job, options, self.catalogue)
            if not outcome.ok:
                failed.add(job.name)
            outcomes.append(outcome)
            on_event("finished", job, outcome)
        return outcomes


class ProcessPool:
    """Up to `jobs` runs at once, each in a worker process that stays for the next run."""

    def __init__(self, jobs: int, device: str | None = None):
        self.jobs, self.device = jobs, device

    def run(self, plan: Plan, options: RunOptions, on_event: OnEvent) -> list[Outcome]:
        logs = Path(options.out) / "_logs"
        logs.mkdir(parents=True, exist_ok=True)
        waiting = plan.start_order()
        gpus = gpus_to_share(plan, self.device)
        workers = [Worker(threads_per_process(self.jobs)) for _ in range(min(self.jobs, len(plan.jobs)))]
        for number, worker in enumerate(workers):
            worker.gpu = gpu_for_worker(number, gpus, os.environ.get("CUDA_VISIBLE_DEVICES"))
        idle = list(reversed(workers))
        running: dict[Worker, tuple[Job, Path]] = {}
        outcomes: list[Outcome] = []
        failed: set[str] = set()
        try:
            while waiting or running:
                for job in list(waiting):
                    if job.requires & failed:
                        waiting.remove(job)
                        outcomes.append(blocked_outcome(job, job.requires & failed))
                        failed.add(job.name)
                        on_event("finished", job, outcomes[-1])
                    elif idle and not (job.requires & _busy(waiting, running)):
                        waiting.remove(job)
                        worker = idle.pop()
                        log = logs / f"{job.name}-s{job.seed}{_sweep_suffix(job)}.log"
                        worker.start(job, options, log)
                        running[worker] = (job, log)
                        on_event("started", job, None)
                for worker in [w for w in running if w.poll() is not None]:
                    job, log = running.pop(worker)
                    outcome = worker.outcome(job, log)
                    if worker.alive:
                        idle.append(worker)
                    elif waiting:  # it died: another takes its place
                        idle.append(Worker(threads_per_process(self.jobs)))
                        idle[-1].gpu = worker.gpu
                    if not outcome.ok:
                        failed.add(job.name)
                    outcomes.append(outcome)
                    on_event("finished", job, outcome)
                time.sleep(POLL_SECONDS)
        finally:
            for worker in running:  # interrupted: stop the runs still going (they can be resumed)
                worker.stop(interrupt=True)
            for worker in idle:
                worker.stop(interrupt=worker.jobs == 0)  # one never used may still be importing
            for worker in [*running, *idle]:
                worker.process.wait()
        return outcomes


def _busy(waiting: list[Job], running: dict) -> set[str]:
    """Names of specs with a job (any seed) still waiting or running: the jobs needing them wait."""
    return {job.name for job in waiting} | {job.name for job, _ in running.values()}


def _sweep_suffix(job: Job) -> str:
    import hashlib

    return "-" + hashlib.sha1(" ".join(job.sweep).encode()).hexdigest()[:6] if job.sweep else ""


class Worker:
    """A `python -m runner.suite.worker` process: runs one job at a time and stays for the next, so each
    process imports torch and the plugins once. poll() is the job's end: None while it runs, else
    its exit code (a reply's 0, or the worker's death's)."""

    def __init__(self, threads: int | None = None):
        threads_arg = ["--threads", str(threads)] if threads else []
        # Replies come on a pipe of their own: what the worker prints outside a job (a plugin that
        # prints on import, say) goes to our stderr and cannot be mistaken for a reply.
        read, write = os.pipe()
        command = [sys.executable, "-m", "runner.suite.worker", "--replies", str(write), *threads_arg]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=2, pass_fds=(write,), text=True,
                                        bufsize=1)
        os.close(write)  # the worker holds the only write end: its death ends our reads
        assert self.process.stdin is not None  # stdin=PIPE
        self.requests: IO[str] = self.process.stdin  # one JSON job a line
        self.replies = os.fdopen(read)
        self.reply: dict | None = None
        self.exit_code: int | None = None
        self.gpu: str | None = None  # the one GPU it is to see (gpu_for_worker), set before its first job
        self.jobs = 0
        self._reader: threading.Thread | None = None

    def start(self, job: Job, options: RunOptions, log: Path) -> None:
        self.exit_code, self.reply = None, None
        message = {"job": job_to_json(job), "options": options.__dict__, "log": str(log)}
        if self.jobs == 0 and self.gpu is not None:  # CUDA reads it when it starts, in the first job
            message["env"] = {"CUDA_VISIBLE_DEVICES": self.gpu}
        self.jobs += 1
        try:
            self.requests.write(json.dumps(message) + "\n")
            self.requests.flush()
        except OSError:  # it died since it was last seen alive: the reader finds the end of its replies
            pass
        self._reader = threading.Thread(target=self._wait_for_reply, daemon=True)
        self._reader.start()

    def _wait_for_reply(self) -> None:
        line = self.replies.readline()
        try:
            self.reply = json.loads(line)["outcome"]
            self.exit_code = 0
            return
        except (ValueError, KeyError, TypeError):
            pass
        if line:  # not a reply: a broken worker, whose job is failed and which is not reused
            self.process.kill()
            self.process.wait()
            self.exit_code = 1
        else:  # end of file: it died
            self.exit_code = self.process.wait() or 1

    def poll(self) -> int | None:
        if self.exit_code is None and self._reader is not None and not self.alive:
            # It died mid-job, but a process it forked may hold the reply pipe open, and then the
            # reader never sees its end: take a reply already sent, else its death.
            self._reader.join(timeout=1)
            if self.exit_code is None:
                self.exit_code = self.process.returncode or 1
        return self.exit_code

    def outcome(self, job: Job, log: Path) -> Outcome:
        if self.reply is not None:
            return Outcome.from_json(self.reply)
        code = self.exit_code or 1
        how = f"signal {-code}: {signal.strsignal(-code)}" if code < 0 else f"exit code {code}"
        return Outcome(job, "failed", error=f"its worker process ended ({how}); " + log_tail(log),
                       exit_code=code if code > 0 else 1)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, interrupt: bool) -> None:
        """End the worker: at once if interrupt (its run is marked interrupted and can be resumed),
        else when it has finished its job."""
        if interrupt and self.alive:
            self.process.terminate()
        try:
            self.requests.close()  # end of input: the worker exits
        except OSError:
            pass


def log_tail(log: Path) -> str:
    """The last lines of a run's log, or that there is none (a worker killed before the run began)."""
    try:
        lines = log.read_text(errors="replace").strip().splitlines()[-3:]
        return f"log {log}:\n    " + "\n    ".join(lines)
    except FileNotFoundError:
        return "no log: it ended before the run began"


def threads_per_process(processes: int) -> int | None:
    """CPU threads for each of `processes` torch processes on this machine: the cores shared out
    (two runs with 2 threads each on 2 cores spin against each other). None when the user set
    OMP_NUM_THREADS: theirs stands."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // processes)


def gpu_for_worker(index: int, count: int, visible: str | None) -> str | None:
    """The one GPU worker `index` sees (its CUDA_VISIBLE_DEVICES) when there are several: workers
    take them in turn, so --jobs 4 on 4 GPUs puts one run on each. None with one GPU or none."""
    devices = [d for d in visible.split(",") if d.strip()] if visible else [str(i) for i in range(count)]
    return devices[index % len(devices)] if len(devices) > 1 else None


def gpus_to_share(plan: Plan, device: str | None) -> int:
    """How many GPUs the workers take in turn: none under --device cpu, or when a run names its GPU
    (cuda:1 needs to see them all)."""
    named = any(":" in str(choice) for choice in [device, *(job.device for job in plan.jobs)])
    if device == "cpu" or named:
        return 0
    import torch  # device_count() starts no CUDA context

    return torch.cuda.device_count()


# ---- one job ------------------------------------------------------------------------------------

def run_job(job: Job, options: RunOptions, catalogue=None) -> Outcome:
    """Run one job in this process (resuming its unfinished run under --resume); a failure is an
    Outcome, not an exception. Ctrl-C still interrupts."""
    started = time.perf_counter()
    outcome = lambda status, **kw: Outcome(job, status, seconds=round(time.perf_counter() - started, 3), **kw)
    try:
        result = execute_job(job, options, catalogue)
        return outcome("ran", summary=result.results, run_dir=str(result.dir))
    except Exception as exc:
        error = exc if isinstance(exc, RunnerError) else RunnerError(f"{type(exc).__name__}: {exc}")
        details = getattr(exc, "details", None)
        return outcome(failure_status(error.exit_code), exit_code=error.exit_code,
                       error=str(error) + (f" (full traceback: {details})" if details else ""),
                       run_dir=str(details.parent) if details else None)


def execute_job(job: Job, options: RunOptions, catalogue=None):
    """Run one job in this process, resuming its unfinished run under --resume: the finished Run,
    or the run's own exception (run_job turns it into an Outcome; the Python API, runner/api.py,
    lets it rise)."""
    from ..plugin_host.catalogue import Catalogue
    from ..training.flow import execute, resume

    catalogue = catalogue or Catalogue.default()
    spec = load_spec(job.path, catalogue, job.overrides)
    unfinished = resumable(spec, options, catalogue) if options.resume else None
    if unfinished:
        return resume(unfinished, catalogue, data=options.data, show_progress=options.progress)
    return execute(spec, catalogue, out=options.out, data=options.data, quick=options.quick,
                   show_progress=options.progress)


def resumable(spec, options: RunOptions, catalogue) -> Path | None:
    """The latest unfinished run of this spec, seed and mode, if it was made from the same
    spec (resuming reloads the run's own spec.toml: one made from another spec would silently run
    that one); else None, saying why it is not resumed."""
    unfinished = artifacts.unfinished_runs(options.out, spec.name, seed=spec.seed, quick=options.quick)
    if not unfinished:
        return None
    differs = spec_differences(unfinished[-1], spec, catalogue)
    if differs:
        print(f"[{spec.name}] not resuming {unfinished[-1]}: it was made from a different spec "
              f"(differing: {', '.join(differs)}; `runner resume {unfinished[-1]}` continues it as it was); "
              f"starting a fresh run", file=sys.stderr)
        return None
    return unfinished[-1]


def spec_differences(run_dir, spec, catalogue) -> list[str]:
    """The keys in which the spec an unfinished run was made from (its spec.toml) differs from
    `spec`. The code is not compared: resuming after fixing what crashed a run is what it is for."""
    import tomllib

    from ..spec import loading as spec_module

    path = Path(run_dir) / "spec.toml"
    try:
        return [key for key, _, _ in spec_module.differences(spec_module.load(path, catalogue).values, spec.values)]
    except RunnerError:  # not a valid spec now (a plugin's check refuses it, say): its keys as written
        try:
            return ([key for key, _, _ in spec_module.differences(tomllib.loads(path.read_text()), spec.values)]
                    or [f"{path} is invalid"])
        except (OSError, ValueError):
            return [f"{path} is unreadable"]


def blocked_outcome(job: Job, failed: Iterable[str]) -> Outcome:
    names = ", ".join(sorted(failed))
    return Outcome(job, "not run", error=f"it needs {names}, whose run failed", exit_code=RunnerError.exit_code)


def failure_status(exit_code: int) -> str:
    return "diverged" if exit_code == DivergedError.exit_code else "failed"


def stops_everything(outcome: Outcome) -> bool:
    """Missing or corrupt data fails every later run too: no use going on."""
    return outcome.exit_code == DataError.exit_code
