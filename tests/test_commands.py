"""The commands experiment tools have: show, ls, compare, sweeps, --version, completion."""
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from runner import artifacts
from runner.cli import main
from runner.spec.overrides import read as read_overrides

SPECS = Path(__file__).resolve().parents[1] / "specs"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, cifar_archive):
    """p1_q1_raw swept over two learning rates and two seeds (4 quick runs), and one that fails."""
    out = tmp_path_factory.mktemp("sweep")
    common = ["--quick", "--set", "train.iterations=3", "--data", str(cifar_archive), "--out", str(out),
              "--no-progress"]
    assert main([str(SPECS / "p1_q1_raw.toml"), "--set", "train.lr=0.01,0.05", "--seeds", "0,1", *common]) == 0
    assert main([str(SPECS / "p1_q2_normalize.toml"), *common, "--set", "train.lr=1e6", "--set", "train.warmup=0.0",
                 "--set", "train.log_every=1", "--set", "train.iterations=8"]) == 5
    return out


def test_a_sweep_runs_once_per_value_and_seed_each_recording_its_overrides(sweep, capsys):
    runs = sorted((sweep / "p1_q1_raw").iterdir())
    assert len(runs) == 4
    lrs = sorted(tomllib.loads((run / "spec.toml").read_text())["train"]["lr"] for run in runs)
    assert lrs == [0.01, 0.01, 0.05, 0.05]
    for run in runs:
        summary = artifacts.read_summary(run)
        lr = tomllib.loads((run / "spec.toml").read_text())["train"]["lr"]
        recorded = {o.text: o.origin for o in read_overrides(summary["overrides"])}
        # Each value is recorded once, with where it came from: the sweep's point, the --seeds.
        assert recorded[f"train.lr={lr:g}"] == "sweep" and recorded[f"seed={summary['seed']}"] == "seed"


def test_ls_lists_runs_with_their_result_and_filters(sweep, capsys):
    assert main(["ls", str(sweep)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["run", "seed", "status", "result", "overrides", "started", "wall"]
    assert len(out) == 1 + 5
    diverged = next(line for line in out if line.startswith("p1_q2_normalize/"))
    assert " diverged " in diverged and "train.lr=1e6" in diverged
    assert sum(" complete " in line and "test accuracy 0." in line and "--quick train.lr=0.0" in line
               for line in out) == 4

    assert main(["ls", str(sweep), "--status", "diverged"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert main(["ls", str(sweep), "--spec", "p1_q1_raw", "--status", "complete"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 5
    assert main(["ls", str(sweep / "nowhere")]) == 1
    assert "no folder" in capsys.readouterr().err


def test_compare_groups_runs_by_the_settings_they_differ_in(sweep, capsys):
    assert main(["compare", str(sweep / "p1_q1_raw")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "4 runs in 2 groups, differing in: train.lr"
    rows = {line.split()[1]: line for line in out[2:]}
    assert set(rows) == {"0.01", "0.05"}
    for lr, row in rows.items():
        accuracies = [artifacts.read_summary(run)["test_accuracy"] for run in (sweep / "p1_q1_raw").iterdir()
                      if tomllib.loads((run / "spec.toml").read_text())["train"]["lr"] == float(lr)]
        mean = sum(accuracies) / 2
        assert f"test accuracy {mean:.4f} ± " in row and " 0,1 " in row.replace("1,0", "0,1")
    # Named by spec, in the runs folder given by --out.
    assert main(["compare", "p1_q1_raw", "--out", str(sweep)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "4 runs in 2 groups, differing in: train.lr"
    assert main(["compare", "p9_nothing", "--out", str(sweep)]) == 1
    assert "not a run folder" in capsys.readouterr().err


def test_a_suite_skips_the_sweep_points_already_run(sweep, cifar_archive, tmp_path, capsys):
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "p1_q1_raw.toml").write_text(f'extends = "{SPECS / "p1_q1_raw.toml"}"\n')
    common = ["--quick", "--set", "train.iterations=3", "--data", str(cifar_archive), "--out", str(tmp_path / "out"),
              "--no-progress", "--set", "train.lr=0.01,0.05"]
    assert main([str(suite), *common]) == 0
    capsys.readouterr()
    assert main([str(suite), *common]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("up to date") == 2 and "run folder" not in captured.err
    assert "train.lr=0.01" in captured.out and "train.lr=0.05" in captured.out  # the sweep column


def test_show_says_where_each_value_came_from(capsys):
    assert main(["show", str(SPECS / "p1_q4_crop.toml"), "--quick", "--set", "train.lr=0.1"]) == 0
    out = capsys.readouterr().out
    line = lambda key: next(text for text in out.splitlines() if text.startswith(f"{key} ="))
    assert line("lr").endswith("# --set train.lr=0.1")
    assert line("iterations").endswith("# --quick (train.iterations=12)")
    assert line("transforms").endswith("# specs/p1_q4_crop.toml")
    assert line("momentum").endswith("# specs/base/part1.toml (extends)")
    assert line("clip_grad_norm").endswith("# default")
    resolved = tomllib.loads(out)  # it is the spec, as TOML, with comments
    assert resolved["train"]["lr"] == 0.1 and resolved["data"]["transforms"] == ["flip", "normalize", "pad_crop"]


def test_version_and_completion():
    runner = [sys.executable, "-m", "runner"]
    version = subprocess.run([*runner, "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("runner 0.")
    script = subprocess.run([*runner, "completion", "bash"], capture_output=True, text=True)
    assert script.returncode == 0
    for word in ("show", "compare", "--seeds", "--with-deps", "validate", "--status"):
        assert word in script.stdout
    # bash accepts it
    assert subprocess.run(["bash", "-n"], input=script.stdout, text=True).returncode == 0


def test_the_report_shows_a_sweep_as_a_table_of_its_own(sweep, tmp_path, capsys):
    assert main(["report", str(sweep), "--quick", "-o", str(tmp_path / "r.md")]) == 0
    text = (tmp_path / "r.md").read_text()
    table = text[text.index("## Sweeps and other --set runs"):]
    assert "| train.iterations | train.lr | runs | seeds | result (mean ± sd) |" in table
    for lr in ("0.01", "0.05"):
        runs = [run for run in (sweep / "p1_q1_raw").iterdir()
                if tomllib.loads((run / "spec.toml").read_text())["train"]["lr"] == float(lr)]
        accuracies = [artifacts.read_summary(run)["test_accuracy"] for run in runs]
        mean = sum(accuracies) / len(accuracies)
        assert f"| 3 | {lr} | 2 | 0, 1 | test accuracy {mean:.1%} ± " in table
