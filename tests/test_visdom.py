"""The visdom plugin and `runner visdom` against real Visdom servers (subprocesses) and headless Chromium.

Needs visdom's web assets (`runner visdom install-assets`) and Debian's chromium; .ci/setup_visdom.sh
installs both. Without them these tests skip, except on CI (CI=true), where they fail.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from runner.cli import main
from runner.visdom_server import missing_assets

ROOT = Path(__file__).resolve().parents[1]
BASE_SPEC = ROOT / "specs" / "p1_q4_crop.toml"
ON_CI = os.environ.get("CI", "").lower() == "true"
# visdom's client, used here to read windows back, calls a deprecated logging method.
pytestmark = pytest.mark.filterwarnings("ignore:The 'warn' method is deprecated:DeprecationWarning")

# Stands in for grad_magnitude (G/ columns via add_many at BACKWARD_COMPLETED, every 2nd step here,
# two of them declared as a live window) and for a plugin showing images, so these tests depend on
# nothing but the core.
FAKE_PLUGIN = '''
import torch
from runner import TrainEvents, hookimpl

NAMES = ["G/conv01 (0)", "G/conv02 (3)", "G/linear03 (9)"]

@hookimpl
def attach(trainer, run, settings):
    run.metrics.plot("grad", NAMES[:2], "gradient magnitude G (first and last layer)", "G", log=True)

    @trainer.on(TrainEvents.BACKWARD_COMPLETED)
    def g(engine):
        it = engine.state.iteration
        if it % 2 == 0:
            run.metrics.add_many(NAMES, it, torch.tensor([1.0, 0.5, 0.25], device=run.device) * it)

@hookimpl
def run_finished(run, results, settings):
    run.show_images("samples", run.train_images[:12], "first training images")
'''

# Kills the Visdom server (pid in the environment) mid-run, and waits until its port is closed.
KILLER_PLUGIN = '''
import os, signal, socket, time
from ignite.engine import Events
from runner import hookimpl

@hookimpl
def attach(trainer, run, settings):
    @trainer.on(Events.ITERATION_COMPLETED(once=6))
    def kill(engine):
        os.kill(int(os.environ["VISDOM_TEST_PID"]), signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", int(os.environ["VISDOM_PORT"])), timeout=0.2).close()
                time.sleep(0.05)
            except OSError:
                return
'''


def require(ok: bool, message: str):
    if not ok:
        (pytest.fail if ON_CI else pytest.skip)(message + " (.ci/setup_visdom.sh installs it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`runner visdom` in a subprocess, on a free loopback port."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.port, self.log = free_port(), folder / "server.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "runner", "visdom", "--port", str(self.port),
                                          "--env-path", str(folder / "envs")], cwd=ROOT, stdout=log, stderr=log)

    def wait(self, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"visdom server exited ({self.proc.returncode}):\n{self.log.read_text()}")
            try:
                urllib.request.urlopen(f"{self.url}/static/js/main.js", timeout=2).close()
                return self
            except OSError:
                time.sleep(0.2)
        pytest.fail(f"visdom server did not answer in {timeout} s:\n{self.log.read_text()}")

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def windows(self, env: str) -> dict:
        """Every window of an environment, read back through visdom's client API."""
        import visdom

        client = visdom.Visdom(server="http://127.0.0.1", port=self.port, use_incoming_socket=False,
                               raise_exceptions=True)
        return json.loads(client.get_window_data(env=env))


def points(window: dict) -> dict:
    return {trace["name"]: len(trace["x"]) for trace in window["content"]["data"]}


def write_spec(folder: Path, plugin_source: str, extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "helper.py").write_text(plugin_source)
    spec = folder / "quick.toml"
    spec.write_text(f'extends = {json.dumps(str(BASE_SPEC))}\n\n[plugins.helper]\npath = "helper.py"\n{extra}')
    return spec


def only_run(out: Path) -> Path:
    runs = [p for p in (out / "quick").iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """Two servers started together: one for the live run, replay and browser; one to kill mid-run."""
    require(not missing_assets(), "visdom's web assets are missing: run 'runner visdom install-assets'")
    folder = tmp_path_factory.mktemp("visdom")
    started = [Server(folder / "a"), Server(folder / "b")]
    try:
        yield [server.wait() for server in started]
    finally:
        for server in started:
            server.stop()


@pytest.fixture(scope="module")
def live_run(servers, cifar_archive, tmp_path_factory):
    """A quick run plotting live, with the server named on the command line (--set)."""
    server, folder = servers[0], tmp_path_factory.mktemp("live")
    # Listed in the spec so the test does not rest on default-enabled plugins; its settings come from --set.
    spec = write_spec(folder, FAKE_PLUGIN, "\n[plugins.visdom]\n")
    started = time.perf_counter()
    code = main([str(spec), "--quick", "--data", str(cifar_archive), "--out", str(folder / "out"),
                 "--set", 'plugins.visdom.server="http://127.0.0.1"', "--set", f"plugins.visdom.port={server.port}"])
    assert code == 0
    run_dir = only_run(folder / "out")
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"server": server, "dir": run_dir, "summary": summary, "env": summary["visdom"]["env"],
            "seconds": time.perf_counter() - started}


EXPECTED = {"loss": {"loss": 12}, "accuracy": {"batch": 12, "running": 12, "test": 1},
            "grad": {"G/conv01 (0)": 6, "G/conv02 (3)": 6}}


def test_live_windows_hold_every_point(live_run):
    env, summary = live_run["env"], live_run["summary"]
    assert env == f"quick_{live_run['dir'].name}"
    assert summary["visdom"]["server"] == live_run["server"].url and summary["visdom"]["dropped"] == 0
    windows = live_run["server"].windows(env)
    assert set(windows) == set(EXPECTED) | {"images_samples"}
    for win, expected in EXPECTED.items():
        assert points(windows[win]) == expected, win
    assert windows["loss"]["content"]["data"][0]["y"][-1] == pytest.approx(summary["final_loss"], rel=1e-5)
    assert windows["accuracy"]["content"]["data"][2]["y"] == [pytest.approx(summary["test_accuracy"])]
    image = windows["images_samples"]
    assert image["type"] == "image" and image["content"]["src"].startswith("data:image/png;base64,")
    assert image["content"]["caption"] == "first training images"


def test_replay_rebuilds_the_run_in_a_new_environment(live_run, capsys):
    server = live_run["server"]
    assert main(["visdom", "replay", str(live_run["dir"]), "--port", str(server.port), "--env", "replayed"]) == 0
    assert f"{server.url}/env/replayed" in capsys.readouterr().out
    original, replayed = server.windows(live_run["env"]), server.windows("replayed")
    assert {w: points(p) for w, p in replayed.items() if p["type"] == "plot"} == EXPECTED
    assert replayed["images_samples"]["content"] == original["images_samples"]["content"]


def test_browser_renders_the_plots_without_internet(live_run, tmp_path):
    chromium = shutil.which("chromium")
    require(chromium is not None, "Debian's chromium is not installed")
    server = live_run["server"]
    url, shot, net_log = f"{server.url}/env/{live_run['env']}", tmp_path / "visdom.png", tmp_path / "net.json"
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               # Every host but the server's resolves to nothing: the page must need no internet.
               "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--window-size=1400,1000",
               f"--log-net-log={net_log}", f"--screenshot={shot}", "--virtual-time-budget=20000", "--dump-dom", url]
    for attempt in range(3):  # a loaded machine may need longer for the socket to deliver the windows
        profile = tmp_path / f"profile{attempt}"
        done = subprocess.run(command + [f"--user-data-dir={profile}"], capture_output=True, text=True, timeout=120)
        traces = re.findall(r'class="trace scatter', done.stdout)
        if len(traces) >= 6:
            break
    assert done.stdout.count('class="scatterlayer') == 3, done.stderr[-2000:]
    assert len(traces) == 6  # loss; batch, running, test; two G layers
    assert "first training images" in done.stdout
    assert shot.is_file() and shot.stat().st_size > 10_000
    # Every request the page made went to the server (Chromium's own background calls have no initiator).
    log = json.loads(net_log.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    requested = {e["params"]["url"] for e in log["events"]
                 if e["type"] == start_job and e.get("params", {}).get("initiator") == server.url}
    assert any(u.startswith(f"{server.url}/static/js/plotly-plotly.min.js") for u in requested)
    assert all(re.match(r"(http|ws)://127\.0\.0\.1:\d+/", u) for u in requested), requested
    assert not re.search(r" 404 GET /static", server.log.read_text())


def test_server_lost_mid_run_warns_once_and_the_run_completes(servers, cifar_archive, tmp_path, capfd, monkeypatch):
    server = servers[1]
    # The address from the environment this time, the plugin from its default enabling.
    monkeypatch.setenv("VISDOM_SERVER_URL", "http://127.0.0.1")
    monkeypatch.setenv("VISDOM_PORT", str(server.port))
    monkeypatch.setenv("VISDOM_TEST_PID", str(server.proc.pid))
    spec = write_spec(tmp_path, KILLER_PLUGIN)
    assert main([str(spec), "--quick", "--data", str(cifar_archive), "--out", str(tmp_path / "out")]) == 0
    assert server.proc.wait(10) == -signal.SIGKILL
    err = capfd.readouterr().err
    assert err.count("live plots at") == 1
    assert err.count("lost the Visdom server") == 1, err
    run_dir = only_run(tmp_path / "out")
    assert json.loads((run_dir / "status.json").read_text())["status"] == "complete"
    for name in ("summary.json", "metrics.csv", "model.pt", "training_accuracy.png", "spec.toml"):
        assert (run_dir / name).is_file(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["visdom"]["dropped"] >= 1
    # The record is complete even though the server was gone: all 12 loss points, then the test accuracy.
    lines = [json.loads(line) for line in (run_dir / "visdom.jsonl").read_text().splitlines()]
    assert sum(len(m["data"][0]["x"]) for _, m in lines if m["win"] == "loss") == 12
    assert lines[-1][1]["data"][0]["name"] == "test"


# ---- without a server ------------------------------------------------------------------------------


class FakeRun:
    def __init__(self, folder: Path):
        self.spec, self.dir = type("Spec", (), {"name": "fake"})(), folder


def test_no_server_means_no_live_plots_but_a_full_record(tmp_path, capfd):
    from runner.plugins import visdom_live

    settings = visdom_live.Settings(server="127.0.0.1", port=free_port())  # nothing listens there
    run = FakeRun(tmp_path)
    live = visdom_live.Live(run, settings)
    live.line("loss", "loss", [1, 2, 3], [2.3, float("nan"), 2.1], "training loss", "cross-entropy")
    live.sender.flush(5)
    live.sender.join(5)
    assert live.sender.state == "off" and not live.sender.is_alive()
    live.line("loss", "loss", [4], [2.0], "training loss", "cross-entropy")  # never blocks once off
    assert "warning: no Visdom server answers at http://127.0.0.1:" in capfd.readouterr().err
    lines = [json.loads(line) for line in (tmp_path / "visdom.jsonl").read_text().splitlines()]
    assert [(endpoint, m["data"][0]["x"]) for endpoint, m in lines] == [("events", [1.0, 3.0]), ("update", [4.0])]


def test_show_images_is_a_no_op_without_the_plugin(tmp_path, catalogue):
    import numpy as np
    import torch

    from runner.spec.loading import load
    from runner.training.state import Run

    spec = load(ROOT / "specs" / "p1_q1_raw.toml", catalogue, ["plugins.visdom.enabled=false"])
    run = Run(spec=spec, catalogue=catalogue, device=torch.device("cpu"), dir=tmp_path)
    run.show_images("x", np.zeros((2, 3, 4, 4), np.uint8), "nothing")
    assert list(tmp_path.iterdir()) == [] and "visdom" not in run.hooks.state


def test_address_from_settings_then_environment(monkeypatch):
    from runner.plugins.visdom_live import Settings, resolve_address

    monkeypatch.delenv("VISDOM_SERVER_URL", raising=False)
    monkeypatch.delenv("VISDOM_PORT", raising=False)
    assert resolve_address(Settings(server="", port=0)) == ("http://127.0.0.1", 8097, False)
    monkeypatch.setenv("VISDOM_SERVER_URL", "https://example.org:9000")
    assert resolve_address(Settings(server="", port=0)) == ("https://example.org", 9000, True)
    monkeypatch.setenv("VISDOM_PORT", "9100")
    assert resolve_address(Settings(server="", port=0)) == ("https://example.org", 9100, True)
    assert resolve_address(Settings(server="10.0.0.2", port=8200)) == ("http://10.0.0.2", 8200, True)


def test_on_by_default_and_off_on_request(catalogue):
    from runner.spec import loading as spec_module
    assert "visdom" in spec_module.load(BASE_SPEC, catalogue).plugin_names()
    off = spec_module.load(BASE_SPEC, catalogue, ["plugins.visdom.enabled=false"])
    assert "visdom" not in off.plugin_names()


def test_server_refuses_to_start_without_assets_and_names_them(tmp_path, monkeypatch, capsys):
    from runner import visdom_server

    monkeypatch.setattr(visdom_server, "static_dir", lambda: tmp_path)
    assert main(["visdom", "--port", str(free_port())]) == 1
    err = capsys.readouterr().err
    assert "js/plotly-plotly.min.js" in err and "runner visdom install-assets" in err
