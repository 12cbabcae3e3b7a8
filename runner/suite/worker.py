"""A process that `runner --jobs N` keeps for several runs, one at a time.

Importing torch, Ignite, torchmetrics and the plugins takes seconds per process on a small CPU: as
long as a quick run itself. A worker pays it once (and starts paying it before its first job
arrives) and then runs job after job through the run API (executors.run_job), with its output in the
job's log.

Protocol (runner/suite/executors.py is the other end): one JSON message per line on stdin,
{"job": {...}, "options": {...}, "log": PATH, "env": {...}}; one JSON line back per job,
{"outcome": {...}}, on the pipe whose file descriptor `--replies` names, never on stdout, which
anything may print to. End of stdin ends it. "env" (optional) is set before the job runs: the
first job carries the worker's CUDA_VISIBLE_DEVICES, which CUDA reads when it starts, at the first
run on the GPU, so the warm-up below must not start CUDA.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import sys
import traceback


def run_in_log(message: dict) -> dict:
    """executors.run_job for one message, with this process's stdout and stderr (the file descriptors,
    so output of C code and subprocesses too) going to the job's log; returns the Outcome as JSON."""
    from .executors import run_job
    from .plan import Outcome, RunOptions, job_from_json

    job = job_from_json(message["job"])
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        with open(message["log"], "w") as handle:
            os.dup2(handle.fileno(), 1)
            os.dup2(handle.fileno(), 2)
            try:
                # A fresh catalogue (run_job's) per job: plugin files one spec names must not leak into the next.
                return run_job(job, RunOptions(**message["options"])).to_json()
            except BaseException as exc:  # Ctrl-C reaches the parent too; say what happened here
                traceback.print_exc()
                return Outcome(job, "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed",
                               error=f"{type(exc).__name__}: {exc}", exit_code=130 if isinstance(
                                   exc, KeyboardInterrupt) else 1).to_json()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
        gc.collect()  # the finished run's model, data and plugin threads go now, not at some later run


def warm_up(threads: int | None) -> None:
    """Import what every run needs before the first job comes: torch, Ignite and the built-in plugins,
    and the two a run would otherwise import in its setup (torchmetrics, with scipy, at the first
    evaluator; torch._dynamo at the first optimizer). `threads`: this worker's share of the CPU
    cores (executors.threads_per_process)."""
    import torch
    import torch._dynamo  # noqa: F401
    import torchmetrics  # noqa: F401

    from ..plugin_host.catalogue import Catalogue
    from ..training.flow import execute  # noqa: F401

    if threads:
        torch.set_num_threads(threads)
    Catalogue.default()


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.suite.worker")
    parser.add_argument("--replies", type=int, required=True, help="file descriptor of the pipe for the replies")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (executors.threads_per_process)")
    options = parser.parse_args()
    # The suite stops a worker with SIGTERM (executors.Worker.stop): its run unwinds as on Ctrl-C,
    # so the run folder says "interrupted" and keeps its metrics.
    signal.signal(signal.SIGTERM, _interrupt)
    replies = os.fdopen(options.replies, "w", buffering=1)
    try:
        warm_up(options.threads)
        for line in sys.stdin:
            message = json.loads(line)
            os.environ.update(message.get("env", {}))
            outcome = run_in_log(message)
            replies.write(json.dumps({"outcome": outcome}) + "\n")
    except KeyboardInterrupt:  # stopped between jobs or while warming up (a run in progress reports its own)
        return 130
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Every job has written and closed its files (and flushed its live plots) by now; the
    # interpreter's teardown of torch and scipy would only delay the end of the suite.
    os._exit(code)
