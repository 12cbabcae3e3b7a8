"""A folder of specs runs as a suite: dependency order, up-to-date specs skipped, --force reruns."""
import time
from pathlib import Path

import pytest

from runner.cli import main

SPECS = Path(__file__).resolve().parents[1] / "specs"


def two_spec_suite(tmp_path) -> tuple[Path, Path]:
    """A folder where "a" sorts first but requires "b" (b must run first); and the spec both extend."""
    suite = tmp_path / "suite"
    suite.mkdir()
    raw = SPECS / "p1_q1_raw.toml"
    (suite / "a_needs_b.toml").write_text(f'extends = "{raw}"\nrequires = ["b_base.toml"]\n')
    (suite / "b_base.toml").write_text(f'extends = "{raw}"\n')
    return suite, raw


def test_suite_order_and_skipping(tmp_path, cifar_archive, capsys):
    suite, raw = two_spec_suite(tmp_path)
    args = [str(suite), "--quick", "--set", "train.iterations=2", "--data", str(cifar_archive),
            "--out", str(tmp_path / "out")]

    assert main(args) == 0
    err = capsys.readouterr().err
    assert err.index("[b_base] run folder") < err.index("[a_needs_b] run folder")

    assert main(args) == 0
    captured = capsys.readouterr()
    assert "[a_needs_b] up to date" in captured.err and "[b_base] up to date" in captured.err
    assert "run folder" not in captured.err and "skipped" in captured.out

    (suite / "b_base.toml").write_text(f'extends = "{raw}"\n[train]\nlr = 0.02\n')  # b changed
    assert main(args) == 0
    err = capsys.readouterr().err
    # a attacks or evaluates b's model, say: its old run used b's old model.
    assert "[b_base] run folder" in err and "[a_needs_b] reruns: b_base is rerun" in err
    assert "[a_needs_b] run folder" in err

    assert main(args + ["--force"]) == 0
    assert capsys.readouterr().err.count("run folder") == 2
    assert len(list((tmp_path / "out" / "b_base").iterdir())) == 3


def test_a_spec_reruns_when_a_spec_it_requires_ran_since(tmp_path, cifar_archive, capsys):
    suite, raw = two_spec_suite(tmp_path)
    (suite / "c_needs_a.toml").write_text(f'extends = "{raw}"\nrequires = ["a_needs_b.toml"]\n')
    common = ["--quick", "--set", "train.iterations=2", "--data", str(cifar_archive), "--out", str(tmp_path / "out")]
    assert main([str(suite), *common]) == 0
    time.sleep(1)  # run folders are named by the second
    # b retrained on its own with another seed: a (seed 0) takes b's seed 0 run, unchanged.
    assert main([str(suite / "b_base.toml"), "--seed", "1", *common]) == 0
    assert main([str(suite), *common]) == 0
    assert capsys.readouterr().err.count("up to date") == 3
    # b retrained on its own with a's seed: a used the older model.
    assert main([str(suite / "b_base.toml"), *common]) == 0
    capsys.readouterr()

    assert main([str(suite), *common]) == 0
    err = capsys.readouterr().err
    assert "[b_base] up to date" in err  # it needs nothing
    assert "[a_needs_b] reruns: b_base ran after it" in err and "[a_needs_b] run folder" in err
    assert "[c_needs_a] reruns: a_needs_b is rerun" in err and "[c_needs_a] run folder" in err

    assert main([str(suite), *common]) == 0
    assert capsys.readouterr().err.count("up to date") == 3


def _failing_suite(tmp_path):
    """b diverges (lr 1e6); a needs b; c is independent."""
    suite = tmp_path / "suite"
    suite.mkdir()
    raw = SPECS / "p1_q1_raw.toml"
    (suite / "a_needs_b.toml").write_text(f'extends = "{raw}"\nrequires = ["b_diverges.toml"]\n')
    (suite / "b_diverges.toml").write_text(f'extends = "{raw}"\n[train]\nlr = 1e6\nwarmup = 0.0\n')
    (suite / "c_alone.toml").write_text(f'extends = "{raw}"\n')
    return suite


def test_a_diverged_run_does_not_stop_the_suite(tmp_path, cifar_archive, capsys):
    args = [str(_failing_suite(tmp_path)), "--quick", "--set", "train.iterations=4", "--set", "train.log_every=1",
            "--data", str(cifar_archive), "--out", str(tmp_path / "out")]
    assert main(args) == 5  # the diverged run's exit code
    captured = capsys.readouterr()
    assert "[a_needs_b] not run: it needs b_diverges, whose run failed" in captured.err
    assert "2 of 3 runs did not complete: b_diverges, a_needs_b" in captured.err
    status = {line.split()[0]: line.rstrip() for line in captured.out.splitlines() if line[:1].isalpha()}
    assert status["b_diverges"].endswith("diverged") and status["a_needs_b"].endswith("not run")
    assert status["c_alone"].endswith("ran")
    assert (next((tmp_path / "out" / "c_alone").iterdir()) / "summary.json").is_file()
    assert not (tmp_path / "out" / "a_needs_b").exists()


def test_jobs_run_specs_in_parallel_processes_in_dependency_order(tmp_path, cifar_archive, capsys):
    args = [str(_failing_suite(tmp_path)), "--quick", "--set", "train.iterations=4", "--set", "train.log_every=1",
            "--data", str(cifar_archive), "--out", str(tmp_path / "out"), "--jobs", "2"]
    assert main(args) == 5
    captured = capsys.readouterr()
    assert "[a_needs_b] not run: it needs b_diverges" in captured.err
    assert "[b_diverges] seed 0 diverged" in captured.err and "[c_alone] seed 0 done" in captured.err
    assert (tmp_path / "out" / "_logs" / "c_alone-s0.log").is_file()
    assert (next((tmp_path / "out" / "c_alone").iterdir()) / "summary.json").is_file()


def _job(name, requires=(), seed=0, path=None, overrides=()):
    from runner.suite.plan import Job

    return Job(path=str(path or SPECS / "p1_q1_raw.toml"), overrides=tuple(overrides), name=name, seed=seed,
               requires=frozenset(requires))


def test_jobs_start_the_longest_chain_first_timed_by_previous_runs():
    from runner.suite.plan import Plan

    jobs = [_job("short"), _job("fresh"), _job("long"), _job("source"), _job("attack", ["source"])]
    seconds = {"short": 10, "long": 100, "source": 30, "attack": 80, "fresh": 0}
    plan = Plan(jobs=jobs, expected={job: seconds[job.name] for job in jobs})
    # source heads 30 + 80 s of work, more than long's 100 s; fresh has no run yet: last.
    assert [job.name for job in plan.start_order()] == ["source", "long", "attack", "short", "fresh"]
    # Nothing timed yet (a first suite): the order given stands.
    assert [job.name for job in Plan(jobs=jobs).start_order()] == [job.name for job in jobs]


def _wait(worker, seconds=180):
    deadline = time.monotonic() + seconds
    while worker.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return worker.poll()


def test_a_worker_runs_job_after_job_each_like_a_fresh_process(tmp_path, cifar_archive):
    from runner.plugin_host.catalogue import Catalogue
    from runner.suite.executors import Worker
    from runner.suite.plan import RunOptions, quick_overrides

    raw = SPECS / "p1_q1_raw.toml"
    overrides = quick_overrides(raw, Catalogue.default()) + ["train.iterations=3"]
    options = RunOptions(out=str(tmp_path / "out"), data=str(cifar_archive), quick=True, progress=False)
    worker = Worker()
    try:
        outcomes = []
        for number, path in enumerate([raw, tmp_path / "missing.toml", raw]):
            job = _job("p1_q1_raw" if path == raw else "missing", path=path, overrides=overrides)
            worker.start(job, options, tmp_path / f"job{number}.log")
            assert _wait(worker) == 0
            outcomes.append(worker.outcome(job, tmp_path / f"job{number}.log"))
        # A bad spec fails its job only, with the spec's exit code; the worker goes on.
        assert [o.status for o in outcomes] == ["ran", "failed", "ran"] and outcomes[1].exit_code == 2
        assert "spec file not found" in outcomes[1].error
        first, second = sorted((tmp_path / "out" / "p1_q1_raw").iterdir())
        assert {outcomes[0].run_dir, outcomes[2].run_dir} == {str(first), str(second)}  # told, not scraped
        # The same seed in a used process gives the same run as in a fresh one (same losses, same accuracy).
        assert (first / "metrics.csv").read_text() == (second / "metrics.csv").read_text()
        assert outcomes[0].summary["test_accuracy"] == outcomes[2].summary["test_accuracy"]
    finally:
        worker.stop(interrupt=False)
        assert worker.process.wait(timeout=30) == 0


def test_a_worker_that_dies_fails_its_run_only(tmp_path, cifar_archive, capsys):
    suite = tmp_path / "suite"
    suite.mkdir()
    # At the run's start: configure also runs when a spec loads, in this process.
    (tmp_path / "die.py").write_text("import os\nfrom runner import hookimpl\n\n\n@hookimpl\n"
                                     "def attach(run, settings):\n    os._exit(9)\n")
    raw = SPECS / "p1_q1_raw.toml"
    (suite / "a_dies.toml").write_text(f'extends = "{raw}"\n[plugins.die]\npath = "{tmp_path / "die.py"}"\n')
    for name in ("b_ok", "c_ok", "d_ok"):
        (suite / f"{name}.toml").write_text(f'extends = "{raw}"\n')
    args = [str(suite), "--quick", "--set", "train.iterations=2", "--data", str(cifar_archive),
            "--out", str(tmp_path / "out"), "--jobs", "2"]
    assert main(args) == 9
    err = capsys.readouterr().err
    assert "[a_dies] seed 0 failed" in err and "exit code 9" in err
    assert all(f"[{name}] seed 0 done" in err for name in ("b_ok", "c_ok", "d_ok"))


def test_workers_take_the_gpus_in_turn():
    from runner.suite.executors import gpu_for_worker, gpus_to_share
    from runner.suite.plan import Job, Plan

    assert [gpu_for_worker(i, 4, None) for i in range(6)] == ["0", "1", "2", "3", "0", "1"]
    assert [gpu_for_worker(i, 4, "2,3") for i in range(3)] == ["2", "3", "2"]  # what the user let us see
    assert gpu_for_worker(0, 1, None) is None and gpu_for_worker(1, 0, None) is None  # one GPU or none: shared
    assert gpu_for_worker(3, 8, "5") is None
    # Nothing to share under --device cpu, or when a run names its GPU (it must see them all).
    assert gpus_to_share(Plan(jobs=[_job("a")]), "cpu") == 0
    named = Job(path="x.toml", overrides=(), name="b", seed=0, device="cuda:1")
    assert gpus_to_share(Plan(jobs=[_job("a"), named]), None) == 0


def test_workers_share_out_the_cores_unless_the_user_chose(monkeypatch):
    import os

    from runner.suite.executors import threads_per_process

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert [threads_per_process(n) for n in (1, 2, 3, 4, 8)] == [4, 2, 1, 1, 1]
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads_per_process(2) is None  # the user's setting stands


def test_a_worker_gets_its_gpu_with_its_first_job_and_keeps_it(tmp_path, cifar_archive):
    from runner.suite.executors import Worker
    from runner.suite.plan import RunOptions

    # A plugin that prints what the run's process sees into the job's log.
    (tmp_path / "show.py").write_text(
        "import os\nimport torch\nfrom runner import hookimpl\n\n\n@hookimpl\ndef configure(spec, settings):\n"
        "    print('sees', os.environ.get('CUDA_VISIBLE_DEVICES'), torch.get_num_threads())\n")
    spec = tmp_path / "show.toml"
    spec.write_text(f'extends = "{SPECS / "p1_q1_raw.toml"}"\n[plugins.show]\npath = "show.py"\n')
    job = _job("show", path=spec, overrides=["train.iterations=1", "data.train_limit=200", "data.test_limit=100",
                                             'device="cpu"'])
    options = RunOptions(out=str(tmp_path / "out"), data=str(cifar_archive), progress=False)
    worker = Worker(threads=1)
    worker.gpu = "3"
    try:
        for number in range(2):
            worker.start(job, options, tmp_path / f"job{number}.log")
            assert _wait(worker) == 0 and worker.outcome(job, tmp_path / "x").status == "ran"
            assert "sees 3 1" in (tmp_path / f"job{number}.log").read_text()
    finally:
        worker.stop(interrupt=False)
        assert worker.process.wait(timeout=30) == 0


def test_a_suite_with_nothing_to_do_starts_no_worker(tmp_path, cifar_archive, monkeypatch, capsys):
    from runner.suite import executors
    suite, _ = two_spec_suite(tmp_path)
    args = [str(suite), "--quick", "--set", "train.iterations=1", "--data", str(cifar_archive),
            "--out", str(tmp_path / "out")]
    assert main(args) == 0
    capsys.readouterr()
    monkeypatch.setattr(executors, "Worker", lambda *a, **k: pytest.fail("a worker started for nothing to run"))
    assert main(args + ["--jobs", "2"]) == 0
    assert capsys.readouterr().err.count("up to date") == 2


def test_a_worker_killed_before_its_run_starts_fails_that_run_only(tmp_path, cifar_archive, monkeypatch, capsys):
    from runner.suite import executors
    class KilledAtItsJob(executors.Worker):
        def start(self, job, options, log):
            super().start(job, options, log)
            if job.name == "a_killed":
                self.process.kill()  # still importing: it never opens the run's log

    monkeypatch.setattr(executors, "Worker", KilledAtItsJob)
    suite = tmp_path / "suite"
    suite.mkdir()
    for name in ("a_killed", "b_ok"):
        (suite / f"{name}.toml").write_text(f'extends = "{SPECS / "p1_q1_raw.toml"}"\n')
    args = [str(suite), "--quick", "--set", "train.iterations=2", "--data", str(cifar_archive),
            "--out", str(tmp_path / "out"), "--jobs", "2"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "[a_killed] seed 0 failed" in err and "signal 9" in err and "[b_ok] seed 0 done" in err


def test_what_a_worker_prints_outside_a_job_is_not_taken_for_a_reply(tmp_path, cifar_archive, monkeypatch, capfd):
    import os

    from runner.suite.executors import Worker
    from runner.suite.plan import RunOptions

    # An entry-point plugin that prints on import, which the worker's warm-up does before any job:
    # a line that is no reply, and one that looks like one.
    site = tmp_path / "site"
    (site / "noisy-0.dist-info").mkdir(parents=True)
    (site / "noisy-0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: noisy\nVersion: 0\n")
    (site / "noisy-0.dist-info" / "entry_points.txt").write_text("[runner.plugins]\nnoisy = noisy_plugin\n")
    (site / "noisy_plugin.py").write_text("print('noisy plugin loaded')\nprint('{\"outcome\": 7}')\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    job = _job("p1_q1_raw", overrides=["train.iterations=1", "data.train_limit=200", "data.test_limit=100"])
    worker = Worker()
    try:
        worker.start(job, RunOptions(out=str(tmp_path / "out"), data=str(cifar_archive), progress=False),
                     tmp_path / "job.log")
        assert _wait(worker) == 0 and worker.outcome(job, tmp_path / "job.log").status == "ran"
        assert '{"outcome": 7}' in capfd.readouterr().err  # the worker's stdout goes to our stderr
    finally:
        worker.stop(interrupt=True)
        worker.process.wait(timeout=30)
