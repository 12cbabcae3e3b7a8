"""--executor dask: a suite on a real local Dask cluster, started with Dask's own command line
(`dask scheduler`, two `dask worker` processes), every socket on 127.0.0.1."""
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from runner import artifacts
from runner.cli import main
from runner.errors import RunnerError
from runner.suite.plan import Job, Plan, RunOptions
from tests.test_suite import _failing_suite

distributed = pytest.importorskip("distributed", reason="the dask extra is not installed (pip install -e '.[dask]')")
from runner.suite.dask_executor import DaskExecutor, parse_resources, resources_for  # noqa: E402

SPECS = Path(__file__).resolve().parents[1] / "specs"
DASK = str(Path(sys.executable).parent / "dask")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _within(seconds: float, function, *args):
    """function(*args)'s result, or a failed test after `seconds`: a cluster that lost its workers
    would leave a suite waiting for them for ever (the thread, a daemon, does not keep pytest alive)."""
    result = {}
    thread = threading.Thread(target=lambda: result.update(value=function(*args)), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"no result in {seconds} s"
    return result["value"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A scheduler and two one-thread workers offering CPU=1 each; its address. Every process is
    stopped (its whole process group: a worker's nanny and the worker it started) afterwards."""
    folder = tmp_path_factory.mktemp("cluster")
    address = f"tcp://127.0.0.1:{_free_port()}"
    # The dashboard's HTTP server (also its health routes, even with --no-dashboard) listens on
    # every interface unless told an address.
    loopback_only = ["--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0"]
    commands = [[DASK, "scheduler", "--port", address.rsplit(":", 1)[1], *loopback_only]] + [
        [DASK, "worker", address, *loopback_only, "--nworkers", "1", "--nthreads", "1", "--resources", "CPU=1"]
    ] * 2
    processes = []
    try:
        for number, command in enumerate(commands):
            with open(folder / f"{number}.log", "w") as log:
                # The workers start in another folder than the command's: paths must reach them absolute.
                processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=folder,
                                                  start_new_session=True))
        with distributed.Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=90)
        yield address
    finally:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for process in processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def test_a_suite_runs_its_dependency_graph_on_the_cluster(cluster, tmp_path, cifar_archive, capsys):
    suite = _failing_suite(tmp_path)  # b diverges, a needs b, c alone
    (suite / "d_needs_c.toml").write_text(f'extends = "{SPECS / "p1_q1_raw.toml"}"\nrequires = ["c_alone.toml"]\n')
    out = tmp_path / "out"
    code = _within(240, main, [str(suite), "--executor", "dask", "--scheduler", cluster, "--quick", "--set",
                               "train.iterations=4", "--set", "train.log_every=1", "--data", str(cifar_archive),
                               "--out", str(out), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 5, captured.err  # the diverged run's exit code; the others went on
    (first,) = (out / "c_alone").iterdir()
    (second,) = (out / "d_needs_c").iterdir()
    for run_dir in (first, second):
        assert artifacts.read_status(run_dir)["status"] == "complete"
        assert artifacts.read_status(run_dir)["pid"] != os.getpid()  # in a worker, not here
        assert json.loads((run_dir / "summary.json").read_text())["iterations"] == 4
    # d's task started only once c's had finished (Dask's dependency), not merely after it began.
    first_done = datetime.fromisoformat(artifacts.read_status(first)["time"])
    assert first_done <= datetime.strptime(second.name[:15], "%Y%m%d-%H%M%S")
    (diverged,) = (out / "b_diverges").iterdir()
    assert artifacts.read_status(diverged)["status"] == "diverged"
    assert not (out / "a_needs_b").exists()  # never started: it needs the diverged run
    assert "[a_needs_b] not run: it needs b_diverges" in captured.err


def test_resources_no_worker_offers_fail_at_once_with_the_command_to_type(cluster, tmp_path):
    job = Job(path=str(SPECS / "p1_q1_raw.toml"), overrides=(), name="p1_q1_raw", seed=0)
    with pytest.raises(RunnerError) as error:
        DaskExecutor(cluster, resources={"CPU": 2}).run(Plan(jobs=[job]), RunOptions(out=str(tmp_path)),
                                                        lambda *event: None)
    assert "no worker" in str(error.value) and f'dask worker {cluster} --resources "CPU=2"' in str(error.value)


def test_each_run_asks_for_a_cpu_and_a_gpu_when_it_runs_on_cuda():
    job = lambda device: Job(path="x.toml", overrides=(), name="x", seed=0, device=device)
    assert resources_for(job("cpu"), {"CPU": 1}, cluster_has_gpus=True) == {"CPU": 1}
    assert resources_for(job("cuda"), {"CPU": 1}, cluster_has_gpus=False) == {"CPU": 1, "GPU": 1}
    assert resources_for(job("auto"), {"CPU": 1}, cluster_has_gpus=True) == {"CPU": 1, "GPU": 1}
    assert resources_for(job("auto"), {"CPU": 1}, cluster_has_gpus=False) == {"CPU": 1}
    assert resources_for(job("cuda"), parse_resources("CPU=2,GPU=0"), cluster_has_gpus=True) == {"CPU": 2}
    assert parse_resources("CPU=2 GPU=1") == {"CPU": 2, "GPU": 1}
    with pytest.raises(RunnerError, match="NAME=AMOUNT"):
        parse_resources("CPU")
