"""Hyperparameter search (runner/suite/search.py): a seeded study pins its trials, pruning stops a trial
cleanly, a killed study continues to its trial count, bad spaces fail when the spec loads."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from runner.cli import main
from runner.errors import SpecError
from runner.plugin_host.catalogue import Catalogue
from runner.spec.loading import load
from runner.spec.overrides import read as read_overrides
from runner.suite import search
from runner.suite.plan import RunOptions, forget_loaded_specs

SPECS = Path(__file__).resolve().parent.parent / "specs"
# Tiny trials: 4 iterations on 400 images (200 of them held out under --quick), tested on 100.
TINY = ["train.iterations=4", "data.train_limit=400", "data.test_limit=100", "train.log_every=2",
        "plugins.visdom.enabled=false"]
SPACES = '''"train.lr" = { log = [1e-3, 0.1] }
"train.weight_decay" = { range = [0.0, 5e-4] }
"model.widths" = { choice = [[16, 16, 32], [32, 32, 64]] }
'''
# What a 4-trial study of seed 0 over SPACES proposes (TPE's first trials are random draws).
PINNED = [
    (0.012520653815, 0.000357594683186, "[16, 16, 32]"),
    (0.0068240784271, 0.000360162246721, "[32, 32, 64]"),
    (0.00744714490408, 1.29631159139e-05, "[16, 16, 32]"),
    (0.0126355981374, 0.000354073911309, "[32, 32, 64]"),
]


def write_spec(folder: Path, extra: str = "", name: str = "searched") -> Path:
    path = folder / f"{name}.toml"
    path.write_text(f'extends = "{SPECS / "p1_q4_crop.toml"}"\n\n[search]\ntrials = 4\nevery = 2\n{extra}{SPACES}')
    return path


def options(out: Path, archive) -> RunOptions:
    return RunOptions(out=str(out), data=str(archive), quick=True, progress=False)


def run_study(path, out, archive, trials, **kw):
    forget_loaded_specs()
    return search.run_search(path, Catalogue.default(), options(out, archive), overrides=TINY, trials=trials,
                             log=lambda line: None, **kw)


def params(trial) -> tuple:
    """The trial's values, the numbers to 12 significant digits."""
    return (float(f"{trial.params['train.lr']:.12g}"), float(f"{trial.params['train.weight_decay']:.12g}"),
            trial.params["model.widths"])


def summaries(out: Path, name="searched") -> list[dict]:
    found = [json.loads(p.read_text()) for p in sorted((out / name).glob("*/summary.json"))]
    return sorted(found, key=lambda s: s["search"].get("trial", 99))


def test_seeded_study_pins_its_trials_and_shows_them(tmp_path, cifar_archive, capsys):
    path, out = write_spec(tmp_path), tmp_path / "out"
    code = main([str(path), "--search", "--quick", "--data", str(cifar_archive), "--out", str(out), "--seeds", "0",
                 "--no-progress", *[a for text in TINY for a in ("--set", text)]])
    assert code == 0
    study = search.open_study(out, "searched", create=False)
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    assert [params(t) for t in trials] == PINNED
    runs = summaries(out)
    trial_runs = [s for s in runs if s["search"]["role"] == "trial"]
    assert [s["search"]["trial"] for s in trial_runs] == [0, 1, 2, 3]
    for summary, trial in zip(trial_runs, trials):
        assert summary["validation_accuracy"] == pytest.approx(trial.value)
        assert summary["search"]["validation_images"] == 200  # held out of the 400: training saw 200
        recorded = {o.text: o.origin for o in read_overrides(summary["overrides"])}
        assert recorded[f"model.widths={trial.params['model.widths']}"] == "search"
        assert summary["iterations"] == 4
    # The best trial's values, trained on every training image, once on the test set (--seeds 0).
    tested = [s for s in runs if s["search"]["role"] == "test"]
    best = study.best_trial
    assert len(tested) == 1 and tested[0]["search"]["best_trial"] == best.number
    assert "search.validation" not in [o.key for o in read_overrides(tested[0]["overrides"])]
    assert study.user_attrs["test"]["test_accuracy"] == [tested[0]["test_accuracy"]]
    capsys.readouterr()
    assert main(["search", "show", str(out / "searched")]) == 0
    shown = capsys.readouterr().out
    assert f"best: trial {best.number}, value {best.value:.4f}" in shown
    assert f"--set model.widths={best.params['model.widths']}" in shown
    assert "parameter importances (fANOVA): " in shown
    assert main(["search", "show", str(out / "searched")]) == 0
    assert capsys.readouterr().out == shown  # the importances are seeded: the same text every time
    # Tables show each space in a column, to 3 significant digits; the command keeps every digit.
    header = next(line for line in shown.splitlines() if line.startswith("trial"))
    assert header.split() == ["trial", "state", "value", "train.lr", "train.weight_decay", "model.widths", "run"]
    assert f"{best.params['train.lr']:.3g}" in shown and f"train.lr={best.params['train.lr']!r}" in shown
    # compare ranks the study: the best values' test run, then the trials by held-out accuracy, and
    # a trial killed before it wrote a summary comes last.
    killed = out / "searched" / "20990101-000000-s0"
    killed.mkdir()
    (killed / "spec.toml").write_bytes((Path(trials[0].user_attrs["run_dir"]) / "spec.toml").read_bytes())
    (killed / "status.json").write_text(json.dumps({"status": "running", "pid": 2**22 + 1}))  # no such process
    assert main(["compare", str(out / "searched")]) == 0
    rows = capsys.readouterr().out.splitlines()[2:]
    assert rows[0].split()[1:5] == ["test", "of", "trial", str(best.number)]
    held_out = []
    for row in rows[1:-1]:
        trial = trials[int(row.split()[2])]
        assert f" {trial.value:.4f} " in row
        held_out.append(trial.value)
    assert len(held_out) == 4 and held_out == sorted(held_out, reverse=True)
    shutil.rmtree(killed)
    from runner.report.collect import Runs
    from runner.report.search import report_sections

    (section,) = report_sections(Runs([], quick=True, out=out, workdir=tmp_path / "work"))
    assert section.title.startswith("Hyperparameter search: searched")
    assert sum(type(b).__name__ == "Figure" for b in section.blocks) == 3
    text = section.blocks[0].text
    assert "4 trials (4 complete; Optuna's TPE sampler and median pruner)" in text
    assert "the last 200 and is judged" in text and f"The best, trial {best.number}, reaches {best.value:.1%}" in text
    assert f"scores {tested[0]['test_accuracy']:.1%} (1 seed) on the test set" in text
    table = section.blocks[1]
    assert table.header[2] == "validation accuracy" and table.rows[0][2] == f"{best.value:.1%}"
    assert report_sections(Runs([], quick=False, out=out, workdir=tmp_path / "work")) == []  # --quick's study only


def test_a_pruned_trial_stops_cleanly(tmp_path, cifar_archive, monkeypatch, capsys):
    # A pruner that prunes at the first report: the trial stops after iteration 2 of 4.
    monkeypatch.setitem(search.PRUNERS, "median", lambda settings: optuna.pruners.ThresholdPruner(lower=1.1))
    path, out = write_spec(tmp_path), tmp_path / "out"
    study = run_study(path, out, cifar_archive, trials=1)
    assert [t.state.name for t in study.get_trials()] == ["PRUNED"]
    assert study.get_trials()[0].intermediate_values.keys() == {2}
    (summary,) = summaries(out)
    assert summary["search"]["pruned_at"] == 2 and summary["iterations"] == 2
    run_dir = Path(study.get_trials()[0].user_attrs["run_dir"])
    assert json.loads((run_dir / "status.json").read_text())["status"] == "pruned"
    capsys.readouterr()
    assert main(["ls", str(out), "--status", "pruned"]) == 0
    assert f"searched/{run_dir.name}  0     pruned" in capsys.readouterr().out
    assert search.trials_table(study)[1][0][1] == "pruned at 2"


def test_a_killed_study_continues_to_its_trial_count(tmp_path, cifar_archive):
    path, out = write_spec(tmp_path), tmp_path / "out"
    forget_loaded_specs()
    spec = load(path, Catalogue.default(), TINY)
    # A search process asked trial 0 and was killed mid-trial: RUNNING in storage, its pid gone.
    study = search.open_study(out, spec, create=True)
    study.sampler = search.make_sampler(spec.search, 0)
    lost = study.ask()
    search.suggest(lost, spec.search)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lost.set_user_attr("pid", int(dead.stdout))
    lost.set_user_attr("host", os.uname().nodename)
    study = run_study(path, out, cifar_archive, trials=2)
    states = [(t.state.name, t.user_attrs.get("interrupted"), t.user_attrs.get("retry_of")) for t in study.get_trials()]
    assert states == [("FAIL", True, None), ("COMPLETE", None, 0), ("COMPLETE", None, None)]
    assert search.counted(study) == 2
    # The trials an uninterrupted study of the same seed makes.
    assert [params(t) for t in study.get_trials()[1:]] == PINNED[:2]


def test_jobs_run_trials_in_worker_processes(tmp_path, cifar_archive):
    path, out = write_spec(tmp_path, 'pruner = "none"\n'), tmp_path / "out"
    study = run_study(path, out, cifar_archive, trials=2, jobs=2)
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE", "COMPLETE"]
    assert sorted(os.path.basename(p) for p in os.listdir(out / "_logs")) == ["searched-trial0.log",
                                                                            "searched-trial1.log"]
    assert {s["search"]["trial"] for s in summaries(out)} == {0, 1}


def test_a_search_spec_without_search_runs_normally(tmp_path, cifar_archive):
    path, out = write_spec(tmp_path), tmp_path / "out"
    assert main([str(path), "--quick", "--data", str(cifar_archive), "--out", str(out), "--no-progress",
                 *[a for text in TINY for a in ("--set", text)]]) == 0
    (summary,) = [json.loads(p.read_text()) for p in (out / "searched").glob("*/summary.json")]
    assert "search" not in summary and "validation_accuracy" not in summary
    assert not (out / "searched" / "_search").exists()


@pytest.mark.parametrize("space, key, message", [
    ('"train.lrr" = { log = [1e-3, 0.1] }', 'search."train.lrr"', "unknown key"),
    ('"plugins.skip.block" = { int = [1, 4] }', 'search."plugins.skip.block"', "plugin 'skip' is not in the spec"),
    ('"train.lr" = { range = [0.1, 0.01] }', 'search."train.lr"', "empty range"),
    ('"train.lr" = { log = [0, 0.1] }', 'search."train.lr"', "non-positive bound"),
    ('"model.widths" = { choice = [16, 32] }', 'search."model.widths": choice 16', "expected a list"),
    ('"train.nesterov" = { choice = [true, 0] }', 'search."train.nesterov": choice 0', "expected true or false"),
    ('"train.iterations" = { range = [100, 200] }', 'search."train.iterations"', "use { int = [100, 200] }"),
    ('"train.lr" = [0.01, 0.1]', 'search."train.lr"', "expected one of"),
    ("trails = 3", "search.trails", "did you mean 'search.trials'"),
])
def test_bad_spaces_fail_when_the_spec_loads(tmp_path, space, key, message):
    path = tmp_path / "bad.toml"
    path.write_text(f'extends = "{SPECS / "p1_q4_crop.toml"}"\n\n[search]\n{space}\n')
    with pytest.raises(SpecError) as caught:
        load(path, Catalogue.default())
    assert caught.value.file == str(path) and str(caught.value).startswith(f"{path}: {key}: ")
    assert message in str(caught.value)


def test_bundled_search_specs_load():
    for name in ("search_p1_q4_crop", "search_p2_q4_skip"):
        spec = load(SPECS / f"{name}.toml", Catalogue.default())
        assert spec.search["pruner"] == "median" and "train.lr" in spec.search
        assert spec.train.batch_size == 100 and spec.train.iterations == 2000
