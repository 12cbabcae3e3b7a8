"""A real run process killed mid-way resumes from its checkpoint and ends exactly as an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from runner import artifacts
from runner.cli import main

SPECS = Path(__file__).resolve().parents[1] / "specs"
ARGS = ["--quick", "--set", "train.iterations=48", "--set", "train.checkpoint_epochs=1", "--seed", "5"]


def test_killed_run_resumes_to_identical_metrics(tmp_path, cifar_archive):
    spec = str(SPECS / "p1_q4_crop.toml")
    killed_out = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "runner", spec, *ARGS, "--data", str(cifar_archive),
                                "--out", str(killed_out)], stderr=subprocess.PIPE, text=True)
    checkpoint = None
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        found = list(killed_out.glob("p1_q4_crop/*/checkpoint_*.pt"))
        if found and torch.load(found[0], weights_only=False)["trainer"]["iteration"] >= 24:
            checkpoint = found[0]
            break
        time.sleep(0.2)
    assert checkpoint is not None, "no checkpoint appeared: " + (process.stderr.read() if process.poll() else "")
    os.kill(process.pid, signal.SIGKILL)  # no chance to clean up: the hardest case
    process.wait()
    run_dir = checkpoint.parent
    assert artifacts.read_status(run_dir)["status"] == "interrupted"
    assert not (run_dir / "summary.json").exists()

    assert main(["resume", str(run_dir), "--data", str(cifar_archive)]) == 0
    assert artifacts.read_status(run_dir)["status"] == "complete"
    assert not checkpoint.exists()

    straight_out = tmp_path / "straight"
    assert main([spec, *ARGS, "--data", str(cifar_archive), "--out", str(straight_out)]) == 0
    (straight,) = (straight_out / "p1_q4_crop").iterdir()
    assert (run_dir / "metrics.csv").read_text() == (straight / "metrics.csv").read_text()
    resumed_summary = json.loads((run_dir / "summary.json").read_text())
    straight_summary = json.loads((straight / "summary.json").read_text())
    assert resumed_summary["test_accuracy"] == straight_summary["test_accuracy"]
    assert resumed_summary["iterations"] == 48


def test_resume_flag_picks_the_unfinished_run(tmp_path, cifar_archive, capsys):
    spec = str(SPECS / "p1_q1_raw.toml")
    out = tmp_path / "out"
    run_dir = out / "p1_q1_raw" / "20200101-000000-s0"
    run_dir.mkdir(parents=True)
    (run_dir / "spec.toml").write_text(_resolved(0, quick=True, iterations=4))
    artifacts.set_status(run_dir, "interrupted", quick=True)
    assert main([spec, "--resume", "--quick", "--set", "train.iterations=4", "--data", str(cifar_archive),
                 "--out", str(out)]) == 0
    assert artifacts.read_status(run_dir)["status"] == "complete"
    assert json.loads((run_dir / "summary.json").read_text())["iterations"] == 4
    assert len(list((out / "p1_q1_raw").iterdir())) == 1  # no new folder


def test_resuming_a_complete_run_is_refused(tmp_path, capsys):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    artifacts.set_status(run_dir, "complete")
    assert main(["resume", str(run_dir)]) == 1
    assert "already complete" in capsys.readouterr().err


def _resolved(seed: int, quick: bool, iterations: int) -> str:
    """The spec.toml a run of `runner p1_q1_raw.toml [--quick] --set train.iterations=N --seed S` writes."""
    from runner.plugin_host.catalogue import Catalogue
    from runner.spec.loading import load
    from runner.suite.plan import quick_overrides

    catalogue, path = Catalogue.default(), SPECS / "p1_q1_raw.toml"
    overrides = (quick_overrides(path, catalogue) if quick else []) + [f"train.iterations={iterations}", f"seed={seed}"]
    return load(path, catalogue, overrides).dumps()


def _interrupted_run(out: Path, run_id: str, quick=True, iterations=4) -> Path:
    """A run folder that stopped before its first checkpoint: resuming it trains from the start."""
    run_dir = out / "p1_q1_raw" / run_id
    run_dir.mkdir(parents=True)
    (run_dir / "spec.toml").write_text(_resolved(artifacts.run_seed(run_dir), quick, iterations))
    artifacts.set_status(run_dir, "running", pid=-1, quick=quick)  # a process that is gone
    artifacts.set_status(run_dir, "interrupted")
    return run_dir


def test_an_interrupted_run_keeps_its_mode(tmp_path):
    # The status once forgot `quick` when the run stopped, so a resumed smoke run came back as a
    # full-protocol result.
    run_dir = _interrupted_run(tmp_path, "20200101-000000-s0")
    assert artifacts.read_status(run_dir)["status"] == "interrupted"
    assert artifacts.read_status(run_dir)["quick"] is True


def test_resume_flag_resumes_each_seed_in_its_own_folder(tmp_path, cifar_archive):
    out = tmp_path / "out"
    # Seed 1's folder is the newer: it was the one --resume took for every seed.
    folders = {seed: _interrupted_run(out, f"20200101-00000{i}-s{seed}") for i, seed in enumerate((0, 1))}
    full = _interrupted_run(out, "20200101-000009-s0", quick=False)  # not a --quick run: left alone
    assert main([str(SPECS / "p1_q1_raw.toml"), "--resume", "--quick", "--set", "train.iterations=4", "--seeds", "0,1",
                 "--data", str(cifar_archive), "--out", str(out)]) == 0
    for seed, run_dir in folders.items():
        assert artifacts.read_status(run_dir)["status"] == "complete"
        assert json.loads((run_dir / "summary.json").read_text())["seed"] == seed
    assert artifacts.read_status(full)["status"] == "interrupted"
    assert len(list((out / "p1_q1_raw").iterdir())) == 3  # no new folder


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_resume_flag_leaves_a_run_made_from_another_spec(tmp_path, cifar_archive, capsys, jobs):
    # It once resumed the run with its own spec.toml, ignoring the spec and --set given now.
    out = tmp_path / "out"
    same = _interrupted_run(out, "20200101-000000-s0")
    other = _interrupted_run(out, "20200101-000000-s1", iterations=5)
    assert main([str(SPECS / "p1_q1_raw.toml"), "--resume", "--quick", "--set", "train.iterations=4", "--seeds", "0,1",
                 "--data", str(cifar_archive), "--out", str(out), "--jobs", jobs]) == 0
    err = capsys.readouterr().err + "".join(log.read_text() for log in out.glob("_logs/*.log"))
    assert f"[p1_q1_raw] not resuming {other}: it was made from a different spec (differing: train.iterations;" in err
    assert f"`runner resume {other}` continues it as it was" in err
    assert artifacts.read_status(same)["status"] == "complete"  # the same spec: resumed
    assert artifacts.read_status(other)["status"] == "interrupted"
    (fresh,) = set((out / "p1_q1_raw").iterdir()) - {same, other}
    assert artifacts.run_seed(fresh) == 1 and json.loads((fresh / "summary.json").read_text())["iterations"] == 4


def test_latest_run_of_a_seed_and_in_time_order(tmp_path):
    base = tmp_path / "spec"
    for run_id in ("20200101-000000-s2", "20200101-000000-s10", "20200101-000000-s0-1", "20200101-000000-s0"):
        (base / run_id).mkdir(parents=True)
        artifacts.set_status(base / run_id, "complete")
        artifacts.write_json(base / run_id / "summary.json", {"quick": False})
    assert artifacts.latest_run(tmp_path, "spec", seed=2).name == "20200101-000000-s2"
    assert artifacts.latest_run(tmp_path, "spec", seed=0).name == "20200101-000000-s0-1"  # the counter is later
    assert artifacts.latest_run(tmp_path, "spec", seed=3) is None


def test_resuming_a_running_run_is_refused(tmp_path, capsys):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    artifacts.set_status(run_dir, "running", pid=os.getpid())  # alive: this very process
    assert main(["resume", str(run_dir)]) == 1
    assert "still running" in capsys.readouterr().err


def test_a_resume_that_finds_no_data_leaves_the_run_interrupted(tmp_path, capsys):
    run_dir = _interrupted_run(tmp_path, "20200101-000000-s0")
    status = json.loads((run_dir / "status.json").read_text())
    artifacts.write_json(run_dir / "status.json", dict(status, data=str(tmp_path / "moved-away")))
    assert main(["resume", str(run_dir)]) == 3  # DataError
    assert "moved-away" in capsys.readouterr().err
    assert artifacts.read_status(run_dir)["status"] == "interrupted"  # resumable once the data is back
