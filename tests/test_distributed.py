"""Data-parallel training through ignite.distributed, on CPU processes (gloo): --nproc-per-node
spawning 2 processes, and torchrun starting them on two "nodes" (two torchrun agents on this
machine, all traffic on the loopback interface)."""
import contextlib
import csv
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from runner import artifacts
from runner.cli import main

SPECS = Path(__file__).resolve().parents[1] / "specs"
ARGS = ["--set", "train.iterations=40", "--set", "data.train_limit=2000", "--set", "data.test_limit=1000",
        "--set", "plugins.visdom.enabled=false"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cifar_archive):
    out = tmp_path_factory.mktemp("out")
    common = [str(SPECS / "p1_q4_crop.toml"), "--quick", "--data", str(cifar_archive), "--no-progress", *ARGS]
    assert main([*common, "--out", str(out / "one")]) == 0
    # Another job holds Ignite's default rendezvous port: the run must find its own.
    with socket.socket() as taken:
        try:
            taken.bind(("127.0.0.1", 2222))
            taken.listen()
        except OSError:
            pass  # held already, which tests the same thing
        assert main([*common, "--out", str(out / "two"), "--nproc-per-node", "2"]) == 0
    (single,) = (out / "one" / "p1_q4_crop").iterdir()
    (parallel,) = (out / "two" / "p1_q4_crop").iterdir()
    return single, parallel


def test_the_run_completes_with_numbers_gathered_from_both_processes(runs):
    _, parallel = runs
    summary = json.loads((parallel / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["iterations"] == 40
    rows = list(csv.DictReader(open(parallel / "metrics.csv")))
    assert len(rows) == 40
    # Each process saw 50 images a step; the log holds the whole batch of 100.
    correct = [float(r["batch_accuracy"]) * 100 for r in rows]
    assert all(abs(c - round(c)) < 1e-4 for c in correct)  # counts out of 100, not out of 50
    assert json.loads((parallel / "status.json").read_text())["status"] == "complete"
    assert (parallel / "model.pt").is_file() and (parallel / "training_accuracy.png").is_file()


def test_accuracy_matches_a_single_process_run_within_noise(runs):
    single, parallel = (json.loads((run / "summary.json").read_text()) for run in runs)
    # Same data, seed and recipe; only BatchNorm's batch statistics (50 images per process) differ.
    # After 40 steps that moves test accuracy as a new seed does (seeds 0-3 in one process: 28-38%).
    assert abs(single["test_accuracy"] - parallel["test_accuracy"]) < 0.12
    assert parallel["test_accuracy"] > 0.2  # it learned: chance is 0.1
    # Each process evaluated the whole test set; the matrix counts it once.
    matrix = parallel["per_class"]["confusion_matrix"]
    assert sum(map(sum, matrix)) == 1000
    correct = sum(matrix[i][i] for i in range(10))
    assert correct / 1000 == pytest.approx(parallel["test_accuracy"], abs=1e-6)


def test_what_cannot_run_data_parallel_says_why(tmp_path, capsys):
    base = ["--out", str(tmp_path), "--nproc-per-node", "3"]
    assert main([str(SPECS / "p1_q4_crop.toml"), *base]) == 1
    assert "train.batch_size 100 must divide by --nproc-per-node 3" in capsys.readouterr().err
    assert main([str(SPECS / "p3_q1_fgsm.toml"), *base]) == 1
    assert "--nproc-per-node is for training" in capsys.readouterr().err


def test_a_missing_archive_fails_before_any_process_starts(tmp_path, capsys):
    missing = tmp_path / "missing"
    args = [str(SPECS / "p1_q1_raw.toml"), "--quick", "--nproc-per-node", "2", "--data", str(missing),
            "--out", str(tmp_path / "out")]
    assert main(args) == 3  # DataError's exit code, as in one process
    err = capsys.readouterr().err
    assert f"runner: error: {missing} does not exist" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "p1_q1_raw").exists()  # no run folder for a run that never started


def test_an_error_in_a_training_process_keeps_its_type_message_and_exit_code(tmp_path, cifar_archive, capsys):
    args = [str(SPECS / "p1_q1_raw.toml"), "--quick", "--nproc-per-node", "2", "--data", str(cifar_archive),
            "--out", str(tmp_path), "--no-progress", *ARGS, "--set", "train.iterations=4", "--set", "train.lr=1e6",
            "--set", "train.log_every=1"]
    assert main(args) == 5  # DivergedError, raised in the training processes
    err = capsys.readouterr().err
    assert "runner: error: loss became" in err and "Traceback" not in err


# Stops training as Ctrl-C would, at the same iteration in every process, when the variable is set.
STOP_PLUGIN = """
import os

from ignite.engine import Events

from runner import hookimpl


@hookimpl
def attach(trainer, run, settings):
    stop_at = int(os.environ.get("RUNNER_TEST_STOP_AT", 0))
    if stop_at:
        @trainer.on(Events.ITERATION_COMPLETED(once=stop_at))
        def stop(engine):
            raise KeyboardInterrupt
"""


def _torchrun_two_nodes(command: list[str], log: Path, **env) -> list[int]:
    """Two torchrun agents, node ranks 0 and 1 of --nnodes 2 with one process each, meeting on a
    free port of 127.0.0.1 (gloo too stays on the loopback interface); their exit codes. Every
    process they started is gone when this returns."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environment = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", **env}
    agents = []
    try:
        with open(log, "w") as output:
            for node in (0, 1):
                agents.append(subprocess.Popen(
                    [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                     "--node-rank", str(node), "--master-addr", "127.0.0.1", "--master-port", str(port), *command],
                    env=environment, stdout=output, stderr=subprocess.STDOUT))
            try:
                return [agent.wait(timeout=240) for agent in agents]
            except subprocess.TimeoutExpired:
                pytest.fail(f"the torchrun agents still ran after 240 s; their output:\n{log.read_text()}")
    finally:
        _stop(agents)


def _stop(agents: list) -> None:
    """End the agents and their workers: SIGTERM first, which an agent passes on to its workers
    (each in a session of its own), then SIGKILL for whatever is left of the tree."""
    tree = [pid for agent in agents if agent.poll() is None for pid in _descendants(agent.pid)]
    for agent in agents:
        if agent.poll() is None:
            agent.terminate()
    for agent in agents:
        try:
            agent.wait(timeout=20)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _descendants(pid: int) -> list[int]:
    """The processes under `pid` (from /proc: each process's parent)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def test_torchrun_on_two_nodes_resumes_and_matches_nproc_per_node(runs, tmp_path, cifar_archive):
    _, spawned = runs
    (tmp_path / "stop_at.py").write_text(STOP_PLUGIN)
    spec = tmp_path / "crop_two_nodes.toml"
    spec.write_text(f'extends = "{SPECS / "p1_q4_crop.toml"}"\n\n[plugins.stop_at]\npath = "stop_at.py"\n')
    out = tmp_path / "out"
    args = [str(spec), "--quick", "--data", str(cifar_archive), "--out", str(out), "--no-progress", *ARGS]

    # Interrupted at iteration 25 of 40, after the checkpoint at the end of epoch 1 (20 iterations).
    codes = _torchrun_two_nodes(["-m", "runner", *args], tmp_path / "interrupted.log", RUNNER_TEST_STOP_AT="25")
    assert codes != [0, 0], (tmp_path / "interrupted.log").read_text()
    (run_dir,) = (out / "crop_two_nodes").iterdir()
    assert artifacts.read_status(run_dir)["status"] == "interrupted"

    # The `runner` script this time, as `torchrun --no-python runner ...` starts it.
    runner_script = str(Path(sys.executable).parent / "runner")
    codes = _torchrun_two_nodes(["--no-python", runner_script, *args, "--resume"], tmp_path / "resumed.log")
    log = (tmp_path / "resumed.log").read_text()
    assert codes == [0, 0], log
    assert "resumed at iteration 20" in log
    assert list((out / "crop_two_nodes").iterdir()) == [run_dir]  # resumed in place, no new folder
    assert artifacts.read_status(run_dir)["status"] == "complete"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["processes"], summary["nodes"], summary["iterations"]) == (2, 2, 40)
    # The same 2 ranks, shards and seed as --nproc-per-node 2: the same run, number for number.
    assert summary["test_accuracy"] == json.loads((spawned / "summary.json").read_text())["test_accuracy"]
    assert (run_dir / "metrics.csv").read_text() == (spawned / "metrics.csv").read_text()


def test_what_torchrun_cannot_run_says_why_before_any_process_meets(tmp_path, capsys, monkeypatch):
    for name, value in {"RANK": "0", "WORLD_SIZE": "3", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(name, value)
    spec = str(SPECS / "p1_q4_crop.toml")
    assert main([spec, "--out", str(tmp_path)]) == 1
    assert "train.batch_size 100 must divide by WORLD_SIZE (torchrun's processes) 3" in capsys.readouterr().err
    assert main([spec, "--out", str(tmp_path), "--nproc-per-node", "2"]) == 1
    assert "drop runner's --jobs and --nproc-per-node" in capsys.readouterr().err


def test_in_a_slurm_job_torchruns_ranks_count_not_slurms(tmp_path, cifar_archive, monkeypatch):
    # torchrun's variables: rank 0 of 1. SLURM's: task 1 of 2 on 2 nodes (srun's one torchrun per
    # node), which ignite would check against torchrun's and refuse to start.
    torchrun = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}
    slurm = {"SLURM_JOB_ID": "7", "SLURM_PROCID": "1", "SLURM_LOCALID": "0", "SLURM_NTASKS": "2",
             "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "localhost"}
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        torchrun["MASTER_PORT"] = str(probe.getsockname()[1])
    for name, value in {**torchrun, **slurm}.items():
        monkeypatch.setenv(name, value)
    args = [str(SPECS / "p1_q1_raw.toml"), "--quick", "--set", "train.iterations=2", "--data", str(cifar_archive),
            "--out", str(tmp_path), "--no-progress"]
    assert main(args) == 0
    (run_dir,) = (tmp_path / "p1_q1_raw").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["processes"], summary["nodes"]) == (1, 1)
    assert os.environ["SLURM_JOB_ID"] == "7"  # hidden from ignite only while it set up
