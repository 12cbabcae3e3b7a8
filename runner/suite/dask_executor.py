"""A suite on a Dask cluster: `runner SUITE --executor dask --scheduler tcp://HOST:PORT`.

Each job of the plan is one Dask task that runs it (executors.run_job) on whichever worker has the
resources it asks for, and returns its Outcome. A job's task takes the tasks of the jobs it
requires as arguments, so Dask starts it only after they finish; when one of them failed it
returns "not run" instead of running. Artifacts land in the --out every worker sees (a shared
filesystem on a real cluster), as absolute paths.

Resources (Dask worker resources, declared by `dask worker ... --resources "CPU=4 GPU=1"`): a run
asks for CPU=1 and, when it runs on CUDA, GPU=1 (a spec with device "auto" asks for a GPU when
some worker offers one). `--resources CPU=2` changes what every run asks for; a run then uses
that many torch threads. Workers without the resources never get a run, so plain `dask worker
ADDRESS` needs `--resources CPU=N`.

A worker process runs one run at a time whatever its thread count: torch's random generator and
thread count belong to the process, and two runs in one process would change each other's. For N
runs at once on a machine, start N worker processes (`--nworkers N --nthreads 1`).
"""
from __future__ import annotations

import dataclasses
import queue
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from ..errors import RunnerError
from .executors import blocked_outcome, run_job
from .plan import Job, Outcome, Plan, RunOptions

DEFAULT_RESOURCES = {"CPU": 1}
STARTED_TOPIC = "runner-run-started"  # the Dask event a task logs when its run begins
CONNECT_SECONDS = 30
POLL_SECONDS = 0.2

_one_run_at_a_time = threading.Lock()


def parse_resources(text: str) -> dict[str, float]:
    """'CPU=2,GPU=1' (or 'CPU=2 GPU=1', as `dask worker --resources` takes them) -> {'CPU': 2, 'GPU': 1}."""
    resources = {}
    for part in text.replace(",", " ").split():
        name, _, amount = part.partition("=")
        try:
            resources[name] = float(amount)
        except ValueError:
            raise RunnerError(f"--resources {text!r}: expected NAME=AMOUNT pairs like CPU=2,GPU=1") from None
    return resources


def resources_for(job: Job, per_run: Mapping[str, float], cluster_has_gpus: bool) -> dict[str, float]:
    """What one run asks a worker for: per_run, plus GPU=1 when it runs on CUDA (unless per_run names GPU)."""
    needs = dict(per_run)
    on_gpu = str(job.device).startswith("cuda") or (job.device == "auto" and cluster_has_gpus)
    if on_gpu and "GPU" not in needs:
        needs["GPU"] = 1
    return {name: amount for name, amount in needs.items() if amount > 0}


def run_task(job: Job, options: RunOptions, threads: int, *required: Outcome) -> Outcome:
    """One job on a Dask worker: not run when a job it requires failed, else run here."""
    failed = {outcome.job.name for outcome in required if not outcome.ok}
    if failed:
        return blocked_outcome(job, failed)
    with _one_run_at_a_time:
        import torch
        from distributed import get_worker

        worker = get_worker()
        worker.log_event(STARTED_TOPIC, worker.get_current_task())
        torch.set_num_threads(threads)
        return run_job(job, options)


class DaskExecutor:
    """Runs a Plan on the Dask cluster whose scheduler is at `scheduler`; `resources`: what each
    run asks a worker for (default DEFAULT_RESOURCES, and GPU=1 for a run on CUDA)."""

    def __init__(self, scheduler: str, resources: dict[str, float] | None = None):
        self.scheduler = scheduler
        self.resources = dict(DEFAULT_RESOURCES if resources is None else resources)

    def run(self, plan: Plan, options: RunOptions, on_event) -> list[Outcome]:
        try:
            from distributed import Client, as_completed
        except ImportError:
            raise RunnerError("--executor dask needs Dask: pip install -e '.[dask]'") from None

        # Workers may start elsewhere: paths they can resolve (the shared filesystem's).
        options = dataclasses.replace(options, out=str(Path(options.out).resolve()),
                                      data=_absolute_if_path(options.data))
        try:
            client = Client(self.scheduler, timeout=CONNECT_SECONDS)
        except (OSError, TimeoutError) as exc:
            raise RunnerError(f"cannot reach the Dask scheduler at {self.scheduler} ({exc}); start one with "
                              f"`dask scheduler` and workers with "
                              f"`dask worker {self.scheduler} --resources CPU=1`") from exc
        try:
            return self._run(client, as_completed, plan, options, on_event)
        finally:
            client.close()

    def _run(self, client, as_completed, plan: Plan, options: RunOptions, on_event) -> list[Outcome]:
        workers = client.scheduler_info()["workers"].values()
        gpus = any(worker.get("resources", {}).get("GPU", 0) > 0 for worker in workers)
        needs = {job: resources_for(job, self.resources, gpus) for job in plan.jobs}
        _check_offered(needs, workers, self.scheduler)

        started: queue.Queue = queue.Queue()  # task keys, put on the client's thread, taken on this one
        client.subscribe_topic(STARTED_TOPIC, lambda event: started.put(event[1]))
        futures: dict[Job, object] = {}
        for job in plan.jobs:  # in dependency order: a job's requirements are submitted before it
            sent = dataclasses.replace(job, path=str(Path(job.path).resolve()))
            required = [futures[other] for other in futures if other.name in job.requires]
            threads = max(1, int(needs[job].get("CPU", 1)))
            futures[job] = client.submit(run_task, sent, options, threads, *required, resources=needs[job],
                                         pure=False, key=f"runner-{job.name}-s{job.seed}-{_token(job)}")
        report = _Report(plan, futures, on_event)
        finished = as_completed(futures.values())
        try:
            while not finished.is_empty():
                while not started.empty():
                    report.started(started.get())
                if finished.has_ready():
                    for future in finished.next_batch(block=False):
                        report.finished(future)
                else:
                    time.sleep(POLL_SECONDS)
        except KeyboardInterrupt:
            # Runs not yet started never start; those running go on to the end on their workers
            # (Dask cannot stop a task), or until the workers are stopped.
            client.cancel(list(futures.values()))
            raise
        finally:
            client.unsubscribe_topic(STARTED_TOPIC)
        return report.outcomes


class _Report:
    """Tells on_event of starts and ends in an order that makes sense: a job's start after the
    ends of the jobs it requires, its end after its start. The messages travel by two ways (a
    task's event, a future's completion) and may arrive the other way round."""

    def __init__(self, plan: Plan, futures: dict, on_event):
        self.futures, self.on_event = futures, on_event
        self.job_of = {future.key: job for job, future in futures.items()}
        self.required = {job: [other for other in plan.jobs if other.name in job.requires] for job in plan.jobs}
        self.told_started: set = set()
        self.told_finished: set = set()
        self.outcomes: list[Outcome] = []

    def started(self, key) -> None:
        job = self.job_of.get(key)
        if job is None or key in self.told_started:
            return
        self.told_started.add(key)
        self._requirements_finished(job)
        self.on_event("started", job, None)

    def finished(self, future) -> None:
        if future.key in self.told_finished:
            return
        self.told_finished.add(future.key)
        job = self.job_of[future.key]
        self._requirements_finished(job)
        outcome = _outcome(job, future, self.futures)
        if outcome.status != "not run":  # its start is still on its way
            self.started(future.key)
        self.outcomes.append(outcome)
        self.on_event("finished", job, outcome)

    def _requirements_finished(self, job: Job) -> None:
        for other in self.required[job]:
            if self.futures[other].done():
                self.finished(self.futures[other])


def _outcome(job: Job, future, futures: dict) -> Outcome:
    """The job's Outcome, with the plan's own job in it (the task got a copy with an absolute path)."""
    try:
        outcome = future.result()
    except Exception as exc:  # the task itself broke: its worker died (KilledWorker), or a requirement's did
        broken = {other.name for other, f in futures.items() if other.name in job.requires and f.status == "error"}
        if broken:
            return blocked_outcome(job, broken)
        return Outcome(job, "failed", error=f"its Dask task failed: {type(exc).__name__}: {exc}",
                       exit_code=RunnerError.exit_code)
    return dataclasses.replace(outcome, job=job)


def _check_offered(needs: dict[Job, dict], workers, scheduler: str) -> None:
    """Fail now, not never: a run whose resources no worker offers would wait for ever."""
    workers = list(workers)
    if not workers:
        print(f"runner: no Dask worker has joined {scheduler} yet; the runs start when workers join", file=sys.stderr)
        return
    for job, asked in needs.items():
        if not any(all(worker.get("resources", {}).get(name, 0) >= amount for name, amount in asked.items())
                   for worker in workers):
            offered = sorted({", ".join(f"{k}={v:g}" for k, v in worker.get("resources", {}).items()) or "nothing"
                              for worker in workers})
            wanted = " ".join(f"{name}={amount:g}" for name, amount in asked.items())
            raise RunnerError(f"{job.label} needs the Dask resources {wanted}, which no worker of {scheduler} "
                              f"offers (they offer: {'; '.join(offered)}); start workers with "
                              f"`dask worker {scheduler} --resources \"{wanted}\"`, or ask for less with --resources")
    if any(worker.get("nthreads", 1) > 1 for worker in workers):
        print("runner: Dask workers with several threads run one run at a time each (a run's torch state is "
              "the process's); for several at once start more worker processes: dask worker --nworkers N "
              "--nthreads 1", file=sys.stderr)


def _absolute_if_path(data: str | None) -> str | None:
    """--data as an absolute path when it names a local file or folder (a URL-like or missing value as given)."""
    return str(Path(data).resolve()) if data and Path(data).exists() else data


def _token(job: Job) -> str:
    import hashlib

    return hashlib.sha1(repr((job.path, job.overrides)).encode()).hexdigest()[:8]
