"""A process that `runner --jobs N` keeps for several runs, one at a time.

Importing torch, Ignite, torchmetrics and the plugins takes ~5 s per process on a 2-core CPU: as
long as a quick run itself. A worker pays it once and then runs job after job, each exactly as
`python -m runner ARGS` would (runner.cli.main, in this process), with its output in the job's log.

A worker starts importing at once, before its first job arrives: `runner --jobs` starts its
workers before it loads the specs and unpacks the data, so that work and theirs overlap.

Protocol (runner/parallel.py is the other end): one JSON job per line on stdin,
{"argv": [...], "log": PATH, "env": {...}}; one JSON line back per job, {"exit": CODE}, on the
pipe whose file descriptor `--replies` names, never on stdout, which anything may print to. End
of stdin ends it. "env" (optional) is set before the job runs: the first job carries the worker's
CUDA_VISIBLE_DEVICES, which CUDA reads when it starts, at the first run on the GPU, so the
warm-up below must not start CUDA.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import traceback


def run_job(argv: list[str], log: str) -> int:
    """cli.main(argv) with this process's stdout and stderr (the file descriptors, so output of C
    code and subprocesses too) going to the log; returns the exit code."""
    from .cli import main

    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        with open(log, "w") as handle:
            os.dup2(handle.fileno(), 1)
            os.dup2(handle.fileno(), 2)
            try:
                return main(argv)
            except SystemExit as exc:  # argparse's errors
                return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
            except BaseException:
                traceback.print_exc()
                return 1
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
    and the two a run would otherwise import in its setup (measured on the 2-core CPU: torchmetrics
    with scipy 1-3 s at the first evaluator, torch._dynamo ~1 s at the first optimizer). `threads`:
    this worker's share of the CPU cores (parallel.threads_per_process)."""
    import torch
    import torch._dynamo  # noqa: F401
    import torchmetrics  # noqa: F401

    from .plugins import Catalogue
    from . import cli, run  # noqa: F401

    if threads:
        torch.set_num_threads(threads)
    Catalogue.default()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.worker")
    parser.add_argument("--replies", type=int, required=True, help="file descriptor of the pipe for the replies")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (parallel.threads_per_process)")
    options = parser.parse_args()
    replies = os.fdopen(options.replies, "w", buffering=1)
    try:
        warm_up(options.threads)
        for line in sys.stdin:
            job = json.loads(line)
            os.environ.update(job.get("env", {}))
            replies.write(json.dumps({"exit": run_job(job["argv"], job["log"])}) + "\n")
    except KeyboardInterrupt:  # stopped between jobs or while warming up (a run in progress reports its own)
        return 130
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Every job has written and closed its files (and flushed its live plots) by now; skipping the
    # interpreter's teardown of torch and scipy saves ~1.4 s at the end of a suite (2-core CPU).
    os._exit(code)
