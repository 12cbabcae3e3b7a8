"""Faults from outside the runner, tried as a new user meets them: a full disk, run files turned to
garbage, a notice printed while the progress bar is drawn. Each must end in a true status and a
message that names the file and says what to type next (docs/guide.md's reliability table)."""
import contextlib
import errno
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from runner import artifacts
from runner.errors import RunnerError
from runner.suite import listing
from runner.testing import MINIMAL_SPEC, run_spec_file

ROOT = Path(__file__).resolve().parents[1]
RUNNER = str(Path(sys.executable).with_name("runner"))
FULL = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture
def minimal_spec(tmp_path) -> Path:
    path = tmp_path / "minimal.toml"
    path.write_text(MINIMAL_SPEC)
    return path


def full_when_writing(monkeypatch, name: str) -> None:
    """Make every atomic write of a file called `name` fail as a full disk does, inside the write."""
    real = artifacts.atomic_path

    @contextlib.contextmanager
    def failing(path):
        with real(path) as tmp:
            if Path(path).name == name:
                tmp.write_bytes(b"half")
                raise FULL
            yield tmp

    monkeypatch.setattr(artifacts, "atomic_path", failing)


def only_run(out: Path) -> Path:
    (run_dir,) = [p for p in out.glob("*/*") if p.is_dir()]
    return run_dir


def assert_failed_not_complete(run_dir: Path, file_name: str) -> None:
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "failed" and file_name in status["error"]
    assert not (run_dir / "summary.json").exists() or file_name == "status.json"
    assert not list(run_dir.glob(f".{file_name}.*"))  # no temporary file left behind
    assert artifacts.completed_runs(run_dir.parent.parent, run_dir.parent.name) == []
    assert artifacts.latest_run(run_dir.parent.parent, run_dir.parent.name) is None
    (info,) = listing.find_runs(run_dir.parent.parent)
    assert info.status == "failed"


@pytest.mark.parametrize("file_name", ["metrics.csv", "model.pt", "training_accuracy.png", "summary.json"])
def test_a_full_disk_on_each_write_names_the_file_and_what_to_type(monkeypatch, tmp_path, minimal_spec,
                                                                    synthetic_cifar, file_name):
    full_when_writing(monkeypatch, file_name)
    out = tmp_path / "out"
    with pytest.raises(RunnerError) as caught:
        run_spec_file(minimal_spec, data=synthetic_cifar, out=out, iterations=20)
    run_dir, message = only_run(out), str(caught.value)
    assert "\n" not in message
    assert f"cannot write {file_name} in {run_dir}: No space left on device" in message
    assert "the run needs about " in message and " KB" in message and "are free" in message
    assert f"runner resume {run_dir}" in message and "--out" in message
    assert "status.json says failed" in message
    assert_failed_not_complete(run_dir, file_name)


def test_a_full_disk_while_checkpointing_names_the_checkpoint(monkeypatch, tmp_path, minimal_spec, synthetic_cifar):
    def full(*args, **kwargs):
        raise FULL

    monkeypatch.setattr(torch, "save", full)  # the first torch.save: the checkpoint after epoch 1 (10 of 20)
    out = tmp_path / "out"
    with pytest.raises(RunnerError) as caught:
        run_spec_file(minimal_spec, data=synthetic_cifar, out=out, iterations=20,
                      set=["train.checkpoint_epochs=1"])
    run_dir = only_run(out)
    assert f"cannot write checkpoint_10.pt in {run_dir}: No space left on device" in str(caught.value)
    assert_failed_not_complete(run_dir, "checkpoint_10.pt")


def test_a_full_disk_at_the_final_status_is_not_taken_for_complete(monkeypatch, tmp_path, minimal_spec,
                                                                    synthetic_cifar):
    real = artifacts.set_status

    def full_at_the_end(run_dir, status, **extra):
        if status == "complete":
            raise artifacts.WriteError(Path(run_dir) / "status.json", FULL)
        real(run_dir, status, **extra)

    monkeypatch.setattr(artifacts, "set_status", full_at_the_end)
    out = tmp_path / "out"
    with pytest.raises(RunnerError, match="cannot write status.json in .*runner resume"):
        run_spec_file(minimal_spec, data=synthetic_cifar, out=out, iterations=5)
    run_dir = only_run(out)
    assert json.loads((run_dir / "status.json").read_text())["status"] == "failed"
    assert artifacts.completed_runs(out, run_dir.parent.name) == []


def test_status_json_has_room_kept_for_it_on_a_full_disk(monkeypatch, tmp_path):
    artifacts.set_status(tmp_path, "running", pid=os.getpid())
    room = tmp_path / artifacts.STATUS_ROOM
    assert room.stat().st_size == artifacts.STATUS_ROOM_BYTES
    real = artifacts.atomic_path

    @contextlib.contextmanager
    def full_while_room_is_held(path):
        with real(path) as tmp:
            if room.exists():
                raise FULL
            yield tmp

    monkeypatch.setattr(artifacts, "atomic_path", full_while_room_is_held)
    artifacts.set_status(tmp_path, "failed", error="disk full")
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "failed"
    assert json.loads((tmp_path / "status.json").read_text())["pid"] == os.getpid()  # kept facts stay
    assert not room.exists()


def _tmpfs(mount: Path, options: str):
    """A tmpfs mounted at `mount` with `options` for the test's length, where this machine lets us
    mount one (CI's containers run as root); the test is skipped where it does not."""
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.fixture
def tiny_disk(tmp_path):
    """A 300 KB tmpfs."""
    yield from _tmpfs(tmp_path / "tiny_disk", "size=300k")


def test_a_run_on_a_really_full_disk(tiny_disk, tmp_path, minimal_spec, synthetic_cifar):
    # hidden=1024: a model.pt of 1.1 MB, which a 300 KB disk cannot hold; 5 iterations: no checkpoint.
    argv = [RUNNER, str(minimal_spec), "--data", str(synthetic_cifar), "--out", str(tiny_disk),
            "--set", "model.hidden=1024", "--set", "train.iterations=5"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    run_dir = only_run(tiny_disk)
    (error,) = [line for line in done.stderr.splitlines() if line.startswith("runner: error:")]
    assert f"cannot write model.pt in {run_dir}: No space left on device" in error
    assert "the run needs about 1.4 MB there (model.pt 1.1 MB, figures and metrics 251 KB)" in error
    assert re.search(r"and (29\d|30\d) KB are free", error), error  # the half-written model.pt's space freed
    assert f"runner resume {run_dir}" in error and "Traceback" not in done.stderr
    assert_failed_not_complete(run_dir, "model.pt")
    assert shutil.disk_usage(tiny_disk).used < 100_000  # the partial model.pt is gone
    listed = subprocess.run([RUNNER, "ls", str(tiny_disk)], capture_output=True, text=True, timeout=60)
    assert " failed " in listed.stdout and "interrupted" not in listed.stdout


# ---- unreadable run files -------------------------------------------------------------------------

@pytest.fixture
def two_runs(tmp_path, minimal_spec, synthetic_cifar) -> list[Path]:
    """Two complete runs of the minimal spec (seeds 0 and 1) in tmp_path/out."""
    for seed in (0, 1):
        run_spec_file(minimal_spec, data=synthetic_cifar, out=tmp_path / "out", iterations=5, set=[f"seed={seed}"])
    return sorted((tmp_path / "out" / "minimal").iterdir(), key=artifacts.run_seed)


def runner_says(capsys, *argv) -> tuple[str, str]:
    from runner.cli import main

    assert main(list(argv)) == 0
    captured = capsys.readouterr()
    return captured.out, captured.err


GARBAGE = {"summary.json": ("{\"test_accuracy\": 0.7", "is not JSON (line 1)"),
           "status.json": ("\x00\x01garbage", "is not JSON (line 1)")}


@pytest.mark.parametrize("file_name", sorted(GARBAGE))
def test_ls_and_compare_name_a_garbage_file_once_and_leave_its_run_out(capsys, two_runs, file_name):
    broken, good = two_runs
    text, reason = GARBAGE[file_name]
    (broken / file_name).write_text(text)
    out = broken.parent.parent
    said = f"skipped: {broken / file_name} {reason}"
    listed, err = runner_says(capsys, "ls", str(out))
    assert err.count(said) == 1, err
    assert good.name in listed and broken.name not in listed
    compared, err = runner_says(capsys, "compare", str(broken.parent))
    assert err.count(said) <= 1 and compared.startswith("1 runs in 1 groups"), compared
    (row,) = [line for line in compared.splitlines() if line.startswith("minimal ")]
    assert f" {artifacts.read_summary(good)['test_accuracy']:.4f} " in row  # the good run's own, not a mean
    import runner

    assert [row.dir for row in runner.runs(out)] == [good]


def test_a_run_marked_complete_without_a_readable_summary_is_not_up_to_date(capsys, two_runs):
    broken, good = two_runs
    (broken / "summary.json").write_text("")
    assert artifacts.completed_runs(broken.parent.parent, "minimal") == [good]
    assert artifacts.latest_run(broken.parent.parent, "minimal", seed=0) is None  # so a suite reruns seed 0
    assert capsys.readouterr().err.count(f"skipped: {broken / 'summary.json'} is not JSON (line 1)") == 1


def test_compare_and_the_report_leave_out_a_run_whose_spec_is_garbage(capsys, two_runs):
    from runner.report.collect import collect

    broken, good = two_runs
    (broken / "spec.toml").write_text("[train\nlr = ")
    compared, err = runner_says(capsys, "compare", str(broken.parent))
    assert compared.startswith("1 runs in 1 groups") and f"skipped: {broken / 'spec.toml'} is not TOML (" in err
    assert [summary["run_dir"] for summary in collect(broken.parent.parent)["minimal"]] == [str(good)]


def test_a_garbage_metrics_table_is_named(two_runs):
    import runner

    broken, _ = two_runs
    (broken / "metrics.csv").write_bytes(b"iteration,loss\n1,\xff\xfe\n")
    with pytest.raises(artifacts.Unreadable, match=f"{broken / 'metrics.csv'} is not a metrics table"):
        _ = runner.Result(broken).metrics


def test_resuming_from_a_truncated_checkpoint_says_which_file_and_what_to_type(
        monkeypatch, tmp_path, minimal_spec, synthetic_cifar, catalogue):
    from runner.training import flow

    def interrupted(run):
        raise KeyboardInterrupt

    monkeypatch.setattr(flow, "_evaluate", interrupted)  # trained 20 iterations, checkpoint at 10 kept
    with pytest.raises(KeyboardInterrupt):
        run_spec_file(minimal_spec, data=synthetic_cifar, out=tmp_path / "out", iterations=20,
                      set=["train.checkpoint_epochs=1"])
    monkeypatch.undo()
    run_dir = only_run(tmp_path / "out")
    checkpoint = run_dir / "checkpoint_10.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    with pytest.raises(RunnerError) as caught:
        flow.resume(run_dir, catalogue, show_progress=False)
    message = str(caught.value)
    assert message.startswith(f"{checkpoint} is unreadable (") and "\n" not in message
    assert f"rm {checkpoint} && runner resume {run_dir}" in message and "--force" in message
    assert artifacts.read_status(run_dir)["status"] == "failed"
    checkpoint.unlink()  # as the message says: the run starts over and completes
    assert flow.resume(run_dir, catalogue, show_progress=False).results["iterations"] == 20


# ---- a notice while the progress bar is drawn -----------------------------------------------------

HOLD_PLUGIN = '''\
"""Holds a run after its first iteration until the file $HOLD_UNTIL exists (a minute at most)."""
import os
import time
from pathlib import Path

from ignite.engine import Events

from runner import hookimpl


@hookimpl
def attach(trainer, settings):
    def hold(engine):
        deadline = time.monotonic() + 60
        while not Path(os.environ["HOLD_UNTIL"]).exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=1), hold)
'''


def test_the_visdom_notice_goes_above_the_progress_bar_not_into_it(monkeypatch, tmp_path, minimal_spec,
                                                                   synthetic_cifar):
    import socket
    import threading

    from tests.test_terminal import Terminal, lines

    # A "server" that takes the plugin's first request and hangs up only once the bar is drawn, so
    # the notice that no server answers comes while the bar is on the screen.
    listener = socket.create_server(("127.0.0.1", 0))
    bar_drawn = threading.Event()

    def hang_up_later():
        connection, _ = listener.accept()
        bar_drawn.wait(60)
        connection.close()

    threading.Thread(target=hang_up_later, daemon=True).start()
    (tmp_path / "hold.py").write_text(HOLD_PLUGIN)
    spec = tmp_path / "held.toml"
    spec.write_text(f'extends = "{minimal_spec}"\n[plugins.hold]\npath = "{tmp_path / "hold.py"}"\n'
                    f'[plugins.visdom]\nenabled = true\nport = {listener.getsockname()[1]}\n')
    go_on = tmp_path / "go_on"
    monkeypatch.setenv("HOLD_UNTIL", str(go_on))
    term = Terminal([RUNNER, str(spec), "--data", str(synthetic_cifar), "--out", str(tmp_path / "out"),
                     "--set", "train.iterations=40"])
    assert term.read_until("0/40 [", 60), term.screen[-2000:]
    bar_drawn.set()
    assert term.read_until("visdom:", 30), term.screen[-2000:]
    go_on.touch()
    assert term.wait(120) == 0, term.screen[-3000:]
    listener.close()
    shown = lines(term.screen)
    notices = [line for line in shown if "visdom:" in line]
    assert notices and all(line.startswith("[held] visdom: warning: no Visdom server answers") for line in notices), \
        notices
    assert any("40/40 [" in line for line in shown[shown.index(notices[0]):])  # the bar, redrawn below it


# ---- killed at each phase of a run, and of a suite ------------------------------------------------

PAUSE_PLUGIN = '''\
"""Pauses a run at the phase $FAULT_PHASE names, saying so on stderr, so a test can kill it there."""
import os
import sys
import time

from ignite.engine import Events

from runner import hookimpl


def pause(phase):
    if os.environ.get("FAULT_PHASE") == phase:
        print(f"PHASE {phase}", file=sys.stderr, flush=True)
        time.sleep(120)


@hookimpl
def attach(trainer, evaluator, run, settings):
    pause("setup")
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=3), lambda engine: pause("training"))
    evaluator.add_event_handler(Events.STARTED, lambda engine: pause("evaluating"))


@hookimpl
def run_finished(run, results, settings):
    pause("writing")
'''


def paused_spec(folder: Path, minimal_spec: Path, name: str = "paused") -> Path:
    plugin = folder / "pause.py"
    plugin.write_text(PAUSE_PLUGIN)
    spec = folder / f"{name}.toml"
    spec.write_text(f'extends = "{minimal_spec}"\n[train]\niterations = 5\n[plugins.pause]\npath = "{plugin}"\n')
    return spec


def wait_for(seen, seconds: float = 60) -> None:
    import time

    deadline = time.monotonic() + seconds
    while not seen():
        assert time.monotonic() < deadline, "the run never reached the phase"
        time.sleep(0.1)


@pytest.mark.parametrize("phase,sig", [("setup", "SIGTERM"), ("training", "SIGTERM"), ("evaluating", "SIGTERM"),
                                       ("writing", "SIGTERM"), ("training", "SIGKILL"), ("writing", "SIGKILL")])
def test_a_run_killed_at_any_phase_is_interrupted_and_resumes(tmp_path, minimal_spec, synthetic_cifar, phase, sig):
    import signal

    out, log = tmp_path / "out", tmp_path / "stderr.txt"
    spec = paused_spec(tmp_path, minimal_spec)
    with open(log, "w") as stderr:
        process = subprocess.Popen([RUNNER, str(spec), "--data", str(synthetic_cifar), "--out", str(out)],
                                   stderr=stderr, env=dict(os.environ, FAULT_PHASE=phase))
        wait_for(lambda: f"PHASE {phase}" in log.read_text())
        process.send_signal(getattr(signal, sig))
        code = process.wait(60)
    run_dir = only_run(out)
    status = artifacts.read_status(run_dir)
    assert status["status"] == "interrupted" and not (run_dir / "summary.json").exists()
    assert artifacts.completed_runs(out, "paused") == []
    if sig == "SIGTERM":  # unwound as on Ctrl-C: its own status and the command that continues it
        assert code == 130 and "stale" not in status
        assert f"continue it with: runner resume {run_dir}" in log.read_text()
    else:  # no chance to say anything: its dead process makes "running" read as interrupted
        assert code == -signal.SIGKILL and status.get("stale")
    if phase == "writing" and sig == "SIGKILL":  # the latest point to die at: resuming still completes it
        done = subprocess.run([RUNNER, "resume", str(run_dir)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert artifacts.read_status(run_dir)["status"] == "complete" and artifacts.read_summary(run_dir)


def test_a_suite_stopped_with_sigterm_marks_its_workers_runs_interrupted(tmp_path, minimal_spec, synthetic_cifar):
    import signal

    suite, out = tmp_path / "suite", tmp_path / "out"
    suite.mkdir()
    for name in ("a", "b"):
        paused_spec(suite, minimal_spec, name)
    (suite / "pause.py").rename(tmp_path / "pause.py")  # not a spec of the suite
    for name in ("a", "b"):
        (suite / f"{name}.toml").write_text((suite / f"{name}.toml").read_text().replace(
            str(suite / "pause.py"), str(tmp_path / "pause.py")))
    process = subprocess.Popen([RUNNER, str(suite), "--data", str(synthetic_cifar), "--out", str(out), "--jobs", "2"],
                               stderr=subprocess.DEVNULL, env=dict(os.environ, FAULT_PHASE="training"))
    logs = [out / "_logs" / f"{name}-s0.log" for name in ("a", "b")]
    wait_for(lambda: all(log.is_file() and "PHASE training" in log.read_text() for log in logs), 120)
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 130
    for name in ("a", "b"):
        (run_dir,) = (out / name).iterdir()
        # Written by the worker itself (not a dead process's "running"), with its metrics so far.
        assert json.loads((run_dir / "status.json").read_text())["status"] == "interrupted"
        assert (run_dir / "metrics.csv").is_file()


# ---- an --out the runner cannot write to ----------------------------------------------------------

@pytest.fixture
def read_only_folder(tmp_path):
    """A read-only tmpfs (as root, chmod would not stop our writes)."""
    yield from _tmpfs(tmp_path / "read_only", "size=64k,ro")


@pytest.mark.parametrize("kind", ["read-only", "a file"])
def test_an_out_that_cannot_be_written_is_named_before_anything_runs(capsys, request, tmp_path, minimal_spec,
                                                                      synthetic_cifar, kind):
    from runner.cli import main

    if kind == "a file":
        out, reason = tmp_path / "a_file", "Not a directory"
        out.write_text("")
    else:
        out, reason = request.getfixturevalue("read_only_folder"), "Read-only file system"
    assert main([str(minimal_spec), "--data", str(synthetic_cifar), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"runner: error: cannot make a run folder in {out / 'minimal'}: {reason}; give --out a folder you can " \
           f"write to" in err and "Traceback" not in err
