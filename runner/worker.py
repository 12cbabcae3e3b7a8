"""A process that `runner --jobs N` keeps for several runs, one at a time.

Importing torch, Ignite, torchmetrics and the plugins takes ~5 s per process on a 2-core CPU: as
long as a quick run itself. A worker pays it once and then runs job after job, each exactly as
`python -m runner ARGS` would (runner.cli.main, in this process), with its output in the job's log.

Protocol (runner/parallel.py is the other end): one JSON job per line on stdin,
{"argv": [...], "log": PATH}; one JSON line back per job, {"exit": CODE}. End of stdin ends it.
"""
from __future__ import annotations

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


def main() -> int:
    replies = os.fdopen(os.dup(1), "w", buffering=1)  # stdout itself goes to each job's log
    try:
        for line in sys.stdin:
            job = json.loads(line)
            replies.write(json.dumps({"exit": run_job(job["argv"], job["log"])}) + "\n")
    except KeyboardInterrupt:  # stopped between jobs (a run in progress reports its own interruption)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
