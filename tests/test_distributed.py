"""--nproc-per-node: data-parallel training in 2 CPU processes (gloo) through ignite.distributed."""
import csv
import json
import socket
from pathlib import Path

import pytest

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
    assert abs(single["test_accuracy"] - parallel["test_accuracy"]) < 0.06
    assert parallel["test_accuracy"] > 0.2  # it learned: chance is 0.1


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
