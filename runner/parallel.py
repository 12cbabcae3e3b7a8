"""`runner ... --jobs N`: several specs (or seeds) at once, in N worker processes.

One small CIFAR-10 run leaves a GPU mostly idle (each step is a few milliseconds of kernel
launches), so independent runs side by side finish the suite several times sooner. A spec starts
once every spec it requires (`requires`) among those being run has completed; one whose
requirement failed is not run. Of the specs ready to start, the one heading the longest chain of
work goes first (critical path first), timed by each spec's previous run in OUT: a deep net
whose model an attack waits for starts before short runs that nothing waits for, so the suite's
last run ends sooner. A worker (runner/worker.py) runs one spec at a time and then the next, so
imports are paid once per worker, not per run; the workers start with the command and share
out the CPU cores (threads_per_process); each run's output goes to a log beside the runs
(OUT/_logs/), and the parent prints one line per start and finish.
"""
from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from . import artifacts
from .cli import failure_status, required_names, skip_if_blocked
from .errors import RunnerError

POLL_SECONDS = 0.2


def child_command(spec, args) -> list[str]:
    """The `runner` arguments that run this one spec with the options the user gave."""
    command = [str(spec.path), "--seed", str(spec["seed"]), "--out", str(args.out), "--no-progress"]
    for override in spec.overrides:  # its own: a dependency --with-deps added was loaded without the user's
        command += ["--set", override]
    for flag, value in (("--data", args.data), ("--device", args.device)):
        if value:
            command += [flag, str(value)]
    command += ["--quick"] * bool(args.quick) + ["--resume"] * bool(args.resume)
    return command


class Worker:
    """A `python -m runner.worker` process: runs one job at a time and stays for the next, so
    each process imports torch and the plugins once. Its `poll()` is the job's exit code, None
    while the job runs, as a Popen's would be; a worker that dies takes its job with it (the
    exit code is its signal's, negative) and is not reused."""

    def __init__(self, threads: int | None = None):
        threads_arg = ["--threads", str(threads)] if threads else []
        # Replies come on a pipe of their own: what the worker prints outside a job (a plugin that
        # prints on import, say) goes to our stderr and cannot be mistaken for a reply.
        read, write = os.pipe()
        self.process = subprocess.Popen([sys.executable, "-m", "runner.worker", "--replies", str(write), *threads_arg],
                                        stdin=subprocess.PIPE, stdout=2, pass_fds=(write,), text=True, bufsize=1)
        os.close(write)  # the worker holds the only write end: its death ends our reads
        self.replies = os.fdopen(read)
        self.exit_code: int | None = None
        self.gpu: str | None = None  # the one GPU it is to see (gpu_for_worker), set before its first job
        self.jobs = 0
        self._reader: threading.Thread | None = None

    def start(self, argv: list[str], log: Path) -> None:
        self.exit_code = None
        job = {"argv": argv, "log": str(log)}
        if self.jobs == 0 and self.gpu is not None:  # CUDA reads it when it starts, in the first job
            job["env"] = {"CUDA_VISIBLE_DEVICES": self.gpu}
        self.jobs += 1
        try:
            self.process.stdin.write(json.dumps(job) + "\n")
            self.process.stdin.flush()
        except OSError:  # it died since it was last seen alive: the reader finds the end of its replies
            pass
        self._reader = threading.Thread(target=self._wait_for_reply, daemon=True)
        self._reader.start()

    def _wait_for_reply(self) -> None:
        line = self.replies.readline()
        try:
            self.exit_code = int(json.loads(line)["exit"])
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
            # It died mid-job, but a process it forked (a data loader, say) may hold the reply pipe
            # open, and then the reader never sees its end: take a reply already sent, else its death.
            self._reader.join(timeout=1)
            if self.exit_code is None:
                self.exit_code = self.process.returncode or 1
        return self.exit_code

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, interrupt: bool) -> None:
        """End the worker: at once if interrupt (its run is marked interrupted and can be resumed),
        else when it has finished its job."""
        if interrupt and self.alive:
            self.process.terminate()
        try:
            self.process.stdin.close()  # end of input: the worker exits
        except OSError:
            pass


def start_workers(count: int, jobs: int) -> list[Worker]:
    """Workers started now, so that their imports run while this process loads the specs and
    unpacks the data; each is told its GPU with its first job."""
    return [Worker(threads_per_process(jobs)) for _ in range(count)]


def threads_per_process(processes: int) -> int | None:
    """CPU threads for each of `processes` torch processes on this machine: the cores shared out.

    torch gives every process one thread per core; two runs with 2 threads each on 2 cores spin
    against each other (Part 1 quick runs, 2-core CPU: 3-11 s of training each, 2 s with 1
    thread each). None when the user set OMP_NUM_THREADS: theirs stands."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // processes)


def gpu_for_worker(index: int, count: int, visible: str | None) -> str | None:
    """The one GPU worker `index` sees (its CUDA_VISIBLE_DEVICES) when there are several: workers
    take them in turn, so --jobs 4 on 4 GPUs puts one run on each. None with one GPU or none."""
    devices = [d for d in visible.split(",") if d.strip()] if visible else [str(i) for i in range(count)]
    return devices[index % len(devices)] if len(devices) > 1 else None


def gpus_to_share(specs, device: str | None) -> int:
    """How many GPUs the workers take in turn: none under --device cpu, or when a run names its GPU
    (cuda:1 needs to see them all)."""
    import torch  # already loaded by the specs' plugins; device_count() starts no CUDA context

    named = any(":" in str(choice) for choice in [device, *(spec["device"] for spec in specs)])
    return 0 if device == "cpu" or named else torch.cuda.device_count()


def expected_seconds(spec, out, quick: bool) -> float:
    """How long a run of this spec took last time in OUT (wall_seconds of its latest completed run);
    0 when it has not run yet, so a first suite keeps the order given."""
    latest = artifacts.latest_run(out, spec.name, quick)
    return float(artifacts.read_summary(latest).get("wall_seconds", 0.0)) if latest else 0.0


def priorities(specs, seconds: list[float]) -> list[float]:
    """Each run's seconds plus the longest chain of runs that waits on it (its upward rank).

    specs are in dependency order (every spec after those it requires), so one backward pass does.
    """
    rank = [0.0] * len(specs)
    for i in reversed(range(len(specs))):
        waiting = [rank[j] for j in range(i + 1, len(specs)) if specs[i].name in required_names(specs[j])]
        rank[i] = seconds[i] + max(waiting, default=0.0)
    return rank


def start_order(specs, out, quick: bool) -> list:
    """The specs by upward rank, highest first: the order in which ready specs are started."""
    rank = priorities(specs, [expected_seconds(spec, out, quick) for spec in specs])
    # sorted() is stable: equal ranks (a first suite: all 0) keep the order given.
    return [spec for _, spec in sorted(zip(rank, specs), key=lambda pair: -pair[0])]


def run_in_processes(specs, args, finished: list, started: list[Worker] = ()) -> dict:
    """Run the specs with at most args.jobs at once; appends (status, spec, results) to finished.
    `started`: workers already starting (start_workers), used before any new one is made; this
    function stops them all.

    Returns {spec name: RunnerError} for the runs that did not complete.
    """
    from . import data

    # Unpack the data once here, so the processes do not race to fill the same cache.
    data.locate(data.resolve_source(args.data, specs[0]["data"]["root"] or None))
    logs = Path(args.out) / "_logs"
    logs.mkdir(parents=True, exist_ok=True)
    names = {spec.name for spec in specs}
    waiting = start_order(specs, args.out, bool(args.quick))
    running: dict = {}  # Worker -> (spec, log path, start time)
    gpus, numbers = gpus_to_share(specs, args.device), itertools.count()

    def with_gpu(worker: Worker) -> Worker:
        worker.gpu = gpu_for_worker(next(numbers), gpus, os.environ.get("CUDA_VISIBLE_DEVICES"))
        return worker

    idle = [with_gpu(worker) for worker in started][::-1]  # taken from the end: the first one first
    new_worker = lambda: with_gpu(start_workers(1, args.jobs)[0])
    completed, failures = set(), {}
    try:
        _schedule(waiting, running, idle, new_worker, completed, failures, finished, names, logs, args)
    finally:
        for worker in running:  # interrupted: stop the runs still going (they can be resumed)
            worker.stop(interrupt=True)
        for worker in idle:
            worker.stop(interrupt=worker.jobs == 0)  # one never used may still be importing: no need to wait
        for worker in [*running, *idle]:
            worker.process.wait()
    return failures


def _schedule(waiting, running, idle, new_worker, completed, failures, finished, names, logs, args) -> None:
    while waiting or running:
        for spec in list(waiting):
            required = required_names(spec) & names
            if skip_if_blocked(spec, required, failures, finished):
                waiting.remove(spec)
            elif len(running) < args.jobs and required <= completed_all(required, waiting, running, completed):
                waiting.remove(spec)
                log = logs / f"{spec.name}-s{spec['seed']}.log"
                while idle and not idle[-1].alive:  # ended while it waited (killed, say): not reused
                    idle.pop()
                worker = idle.pop() if idle else new_worker()
                worker.start(child_command(spec, args), log)
                running[worker] = (spec, log, time.perf_counter())
                print(f"[{spec.name}] seed {spec['seed']} started (log {log})", file=sys.stderr)
        for worker in [w for w in running if w.poll() is not None]:
            spec, log, started = running.pop(worker)
            seconds = time.perf_counter() - started
            exit_code = worker.poll()
            if worker.alive:
                idle.append(worker)
            if exit_code == 0:
                found = run_folder(log)
                results = artifacts.read_summary(found) if found else {}
                completed.add(spec.name)
                finished.append(("ran", spec, results))
                print(f"[{spec.name}] seed {spec['seed']} done in {seconds:.1f} s: test accuracy "
                      f"{results.get('test_accuracy', float('nan')):.4f}", file=sys.stderr)
            else:
                error = RunnerError(f"exit code {exit_code}; log {log}")
                error.exit_code = exit_code if exit_code > 0 else 1
                failures[spec.name] = error
                finished.append((failure_status(error.exit_code), spec, {}))
                tail = log_tail(log, exit_code)
                print(f"[{spec.name}] seed {spec['seed']} failed after {seconds:.1f} s (exit code "
                      f"{exit_code}):\n    " + "\n    ".join(tail), file=sys.stderr)
        time.sleep(POLL_SECONDS)


def completed_all(required: set, waiting: list, running: dict, completed: set) -> set:
    """The required names none of whose runs (any seed) is still waiting or running."""
    pending = {spec.name for spec in waiting} | {spec.name for spec, _, _ in running.values()}
    return {name for name in required if name in completed and name not in pending}


def log_tail(log: Path, exit_code: int) -> list[str]:
    """The last lines of a failed run's log. A worker killed after taking its job but before the
    run began (OOM, a kill) left no log: say what is known instead."""
    try:
        return log.read_text(errors="replace").strip().splitlines()[-3:]
    except FileNotFoundError:
        how = f"signal {-exit_code}: {signal.strsignal(-exit_code)}" if exit_code < 0 else f"exit code {exit_code}"
        return [f"no log: its worker ended before the run began ({how})"]


def run_folder(log: Path) -> Path | None:
    """The run folder a run announced in its log ('[name] run folder PATH')."""
    for line in log.read_text(errors="replace").splitlines():
        if "] run folder " in line:
            return Path(line.split("] run folder ", 1)[1].strip())
    return None
