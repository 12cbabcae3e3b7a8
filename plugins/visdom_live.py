"""Live Visdom plots of a run: loss, batch/running/test accuracy, G of the first and last conv layer, images.

On by default (default_enabled; `[plugins.visdom] enabled = false` turns it off): plots go to a
server when one answers at the run's start, and every run records the same messages to
visdom.jsonl in its folder either way, so `runner visdom replay RUN_DIR` shows a finished run
later. One environment per run, named after the spec and run id; windows are created once and
appended to. The server: settings `server`/`port` (also from the command line with
--set plugins.visdom.port=N), else $VISDOM_SERVER_URL and $VISDOM_PORT, else 127.0.0.1:8097.

Visdom never fails or slows a run: messages are built on the training thread at log points
(train.log_every, at most one send per `interval` seconds), from one small host transfer, then
handed to a background thread through a bounded queue and dropped when it is full; a server that
does not answer or goes away is reported once, and the run goes on.

Other plugins show image grids with `run.show_images(name, images_uint8_nchw, caption)`, which
reaches this plugin's show_images hook when it is on for that run.
"""
from __future__ import annotations

import atexit
import json
import math
import os
import queue
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from urllib.parse import quote, urlparse

from ignite.engine import Events

from runner import Plugin, hookimpl, progress, setting
from runner.visdom_server import DEFAULT_PORT, LOG_NAME, base_url

RETRY_SECONDS = 5.0  # after losing the server, how often to try it again

@dataclass(frozen=True)
class Settings:
    server: str = setting("", "Visdom server URL; default $VISDOM_SERVER_URL, else http://127.0.0.1")
    port: int = setting(0, "server port; default $VISDOM_PORT, else the URL's port, else 8097", min=0, max=65535)
    env: str = setting("", "environment name; default <spec name>_<run id>")
    log: bool = setting(True, f"record every message to {LOG_NAME} in the run folder (for replay)")
    interval: float = setting(1.0, "seconds between sends at least; log points in between go out together",
                              min=0.0)
    queue: int = setting(512, "messages waiting for the sender at most; further ones are dropped", min=1)
    flush_seconds: float = setting(5.0, "when the run finishes, wait at most this long for queued messages",
                                   min=0.0)


plugin = Plugin(settings=Settings, default_enabled=True, help="live plots in Visdom, recorded for replay")

_senders: "weakref.WeakSet[_Sender]" = weakref.WeakSet()  # flushed at exit


@hookimpl
def show_images(run, window: str, images, caption: str, state) -> None:
    """Show a grid of images (uint8 tensor or array, N x C x H x W) in the run's environment.

    One window per name, replaced on each call. Does nothing when Visdom is off for this run,
    and never raises.
    """
    live = getattr(state, "live", None)
    if live is not None:
        live.guard(live.images, window, images, caption, fatal=False)


def resolve_address(settings: Settings) -> tuple[str, int, bool]:
    """(base URL without port, port, whether someone chose it): settings, then environment, then default."""
    raw = settings.server or os.environ.get("VISDOM_SERVER_URL") or ""
    parsed = urlparse(raw if "://" in raw or not raw else f"http://{raw}")
    port = settings.port or _int(os.environ.get("VISDOM_PORT")) or parsed.port or DEFAULT_PORT
    chosen = bool(raw or settings.port or os.environ.get("VISDOM_PORT"))
    return base_url(raw), port, chosen


def _int(text):
    try:
        return int(text) if text else None
    except ValueError:
        return None


class _Sender(threading.Thread):
    """Posts queued messages to the server; the training thread only ever calls offer()."""

    _STOP = object()

    def __init__(self, base: str, port: int, env: str, maxsize: int, say, chosen: bool, run_dir):
        super().__init__(name=f"visdom-sender-{env}", daemon=True)
        self.url, self.env, self.say, self.chosen, self.run_dir = f"{base}:{port}", env, say, chosen, run_dir
        self.queue: queue.Queue = queue.Queue(maxsize)
        self.state = "connecting"  # -> live | off; live -> down -> live
        self.stopping = False
        self.sent = self.dropped = self.rejected = 0
        self._warned_lost = self._warned_rejected = False
        self._retry_at = 0.0
        self._session = None

    def offer(self, endpoint: str, msg: dict) -> None:
        if self.state == "off" or self.stopping:
            return
        try:
            self.queue.put_nowait((endpoint, msg))
        except queue.Full:
            self.dropped += 1

    def flush(self, timeout: float) -> None:
        """Wait until what is queued now has been handled, or timeout; returns at once unless live."""
        if self.state not in ("live", "connecting") or not self.is_alive():
            return
        done = threading.Event()
        deadline = time.monotonic() + timeout
        try:
            self.queue.put(done, timeout=timeout)
        except queue.Full:
            return
        while not done.wait(0.05):
            if time.monotonic() > deadline or self.state not in ("live", "connecting"):
                return

    def stop(self) -> None:
        self.stopping = True
        try:
            self.queue.put_nowait(self._STOP)
        except queue.Full:
            pass  # run() notices `stopping` once the queue is empty

    def run(self) -> None:
        import requests

        self._session = requests.Session()
        if urlparse(self.url).hostname in ("localhost", "127.0.0.1", "::1"):
            self._session.trust_env = False  # a proxy from the environment must not catch loopback traffic
        if self._hello():
            self.state = "live"
            self.say(f"live plots at {self.url}/env/{quote(self.env, safe='')}")
        else:
            self.state = "off"
            later = f"'runner visdom replay {self.run_dir}' shows the plots later"
            if self.chosen:
                self.say(f"warning: no Visdom server answers at {self.url}; "
                         f"the run goes on without live plots ({later})")
            else:
                self.say(f"no Visdom server at {self.url}, so no live plots ('runner visdom' starts one; {later})")
            self._drain()
            return
        while True:
            try:
                item = self.queue.get(timeout=0.5)
            except queue.Empty:
                if self.stopping:
                    return
                continue
            if item is self._STOP:
                return
            if isinstance(item, threading.Event):
                item.set()
                continue
            self._post(*item)

    def _hello(self) -> bool:
        """Create the environment; True if the server answered. Updates to an unknown one would fail there."""
        try:
            self._session.post(f"{self.url}/env/{quote(self.env, safe='')}", data=json.dumps({"eid": self.env}),
                               timeout=(2, 5)).raise_for_status()
            return True
        except Exception:
            return False

    def _post(self, endpoint: str, msg: dict) -> None:
        if self.state == "down":
            now = time.monotonic()
            if now < self._retry_at or not self._hello():
                if now >= self._retry_at:
                    self._retry_at = now + RETRY_SECONDS
                self.dropped += 1
                return
            self.state = "live"
            self.say(f"the Visdom server at {self.url} answers again; plots go on (points meanwhile are lost)")
        import requests

        try:
            response = self._session.post(f"{self.url}/{endpoint}", data=json.dumps(msg), timeout=(2, 10))
        except requests.RequestException as exc:
            self.state, self._retry_at = "down", time.monotonic() + RETRY_SECONDS
            self.dropped += 1
            if not self._warned_lost:
                self._warned_lost = True
                self.say(f"warning: lost the Visdom server at {self.url} ({type(exc).__name__}); "
                         f"the run goes on, its plots are still recorded to {LOG_NAME}")
            return
        if response.status_code >= 400:
            self.rejected += 1
            if not self._warned_rejected:
                self._warned_rejected = True
                self.say(f"warning: the Visdom server refused a plot update (HTTP {response.status_code})")
        else:
            self.sent += 1

    def _drain(self) -> None:
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, threading.Event):
                item.set()


class Live:
    """One run's Visdom state: message builder, log file, sender and what has been plotted so far."""

    def __init__(self, run, settings: dict):
        import visdom

        self.label = run.spec.name
        self.env = settings.env or f"{run.spec.name}_{run.dir.name}"
        base, port, chosen = resolve_address(settings)
        # A client that never sends: its plotting calls return the message they would post, so the
        # messages are exactly visdom's own. offline=True skips its per-append win_exists round trip.
        self.builder = visdom.Visdom(send=False, use_incoming_socket=False, env=self.env)
        self.builder.offline = True
        self.log_path = run.dir / LOG_NAME if settings.log else None
        self._log_lock = threading.Lock()
        self.sender = _Sender(base, port, self.env, settings.queue, self.say, chosen, run.dir)
        self.windows: dict[str, set] = {}  # window -> its trace names
        self.rows_sent = 0
        # visdom's server re-diffs a whole window on every append, so sends are spaced out.
        self.interval, self.last_send = settings.interval, -math.inf
        self.failed = False
        self._reported: set[str] = set()
        self.sender.start()

    def say(self, text: str) -> None:
        progress.notice(f"[{self.label}] visdom: {text}")  # above the run's progress bar, not inside it

    def guard(self, function, *args, fatal: bool = True) -> None:
        """Call function; on any error, report it once: Visdom must never fail a run.

        A fatal error (in the training plots) stops this run's plotting; a bad image from
        another plugin only loses that image.
        """
        if self.failed:
            return
        try:
            function(*args)
        except Exception as exc:
            self.failed = self.failed or fatal
            message = f"{type(exc).__name__}: {exc}"
            if message not in self._reported:
                self._reported.add(message)
                self.say(f"warning: {'plotting stopped after' if fatal else 'an image was not shown:'} {message}")

    # ---- messages -------------------------------------------------------------------------

    def emit(self, built) -> None:
        msg, endpoint = built
        if self.log_path is not None:
            line = json.dumps([endpoint, msg]) + "\n"  # visdom's log_to_filename format
            with self._log_lock, open(self.log_path, "a") as log:
                log.write(line)
        self.sender.offer(endpoint, msg)

    def line(self, win: str, trace: str, x, y, title: str, ylabel: str, **extra) -> None:
        import numpy as np

        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        keep = np.isfinite(y)
        if not keep.any():
            return
        x, y = x[keep], y[keep]
        single = extra.pop("markers_if_single", False) and len(y) == 1
        style = {"markers": True, "markersize": 7} if single else {}
        if win not in self.windows:
            opts = dict(title=title, xlabel="iteration", ylabel=ylabel, legend=[trace], showlegend=True,
                        **extra, **style)
            self.emit(self.builder.line(Y=y, X=x, win=win, opts=opts))
            self.windows[win] = {trace}
        else:
            self.emit(self.builder.line(Y=y, X=x, win=win, update="append", name=trace, opts=dict(style)))
            self.windows[win].add(trace)

    def images(self, name: str, images, caption: str) -> None:
        import numpy as np

        if hasattr(images, "detach"):
            images = images.detach().cpu().numpy()
        images = np.asarray(images, dtype=np.uint8)[:64]
        if images.ndim == 3:
            images = images[None]
        if images.shape[1] == 1:
            images = images.repeat(3, axis=1)
        # The grid is built here in uint8: visdom's own grid is float, and it rescales dark float images.
        n, c, h, w = images.shape
        cols, pad = min(8, n), 2
        rows = math.ceil(n / cols)
        grid = np.full((c, rows * (h + pad) + pad, cols * (w + pad) + pad), 255, dtype=np.uint8)
        for k in range(n):
            top, left = pad + (k // cols) * (h + pad), pad + (k % cols) * (w + pad)
            grid[:, top:top + h, left:left + w] = images[k]
        win = f"images_{name}"
        scale = max(1, min(3, 800 // grid.shape[2]))  # small images (CIFAR's 32 px) shown larger
        self.emit(self.builder.image(grid, win=win, opts=dict(title=name, caption=caption, width=grid.shape[2] * scale,
                                                              height=grid.shape[1] * scale + 40)))
        self.windows.setdefault(win, set())

    # ---- engine events --------------------------------------------------------------------

    def training_rows(self, run, final: bool) -> None:
        """Plot the iterations not plotted yet.

        Between log points the newest row stays back one step: a plugin attached after this one
        may still fill its column for the current iteration. When training completes every
        handler has run, so the rest goes out.
        """
        import torch

        metrics = run.metrics
        stop = metrics.done if final else metrics.done - 1
        start = self.rows_sent
        if stop <= start or (not final and time.monotonic() - self.last_send < self.interval):
            return
        self.last_send = time.monotonic()
        # The core's lines, then the windows plugins declared with run.metrics.plot().
        lines = [("loss", "loss", metrics.loss, "training loss", "cross-entropy", "linear"),
                 ("accuracy", "batch", metrics.correct / metrics.count.clamp(min=1), "accuracy", "accuracy", "linear"),
                 ("accuracy", "running", metrics.running_accuracy(), "accuracy", "accuracy", "linear")]
        for plot in metrics.plots.values():
            scale = "log" if plot.log else "linear"
            lines += [(plot.window, name, metrics.column(name), plot.title, plot.ylabel, scale)
                      for name in plot.columns if metrics.column(name) is not None]
        values = torch.stack([line[2][start:stop].float() for line in lines]).cpu().numpy()  # one host transfer
        x = list(range(start + 1, stop + 1))
        self.rows_sent = stop
        for (window, trace, _, title, ylabel, ytype), row in zip(lines, values):
            self.line(window, trace, x, row, title, ylabel, **({"ytype": "log"} if ytype == "log" else {}))

    def test_accuracy(self, run, evaluator) -> None:
        accuracy = evaluator.state.metrics.get("accuracy")
        if accuracy is not None and math.isfinite(accuracy):
            iteration = run.metrics.done if run.metrics is not None else 0
            self.line("accuracy", "test", [iteration], [accuracy], "accuracy", "accuracy", markers_if_single=True)

    def summary(self) -> dict:
        return {"env": self.env, "server": self.sender.url if self.sender.state != "off" else None,
                "log": LOG_NAME if self.log_path is not None else None, "sent": self.sender.sent,
                "dropped": self.sender.dropped}


@atexit.register
def _flush_all() -> None:
    # Plots a plugin sent after this one's run_finished (images, say) still get out before exit.
    for sender in list(_senders):
        sender.flush(2.0)


@hookimpl
def attach(trainer, evaluator, run, settings, state):
    try:
        live = Live(run, settings)
    except Exception as exc:  # visdom missing or broken: the run goes on without it
        print(f"[{run.spec.name}] visdom: warning: off for this run: {type(exc).__name__}: {exc}", file=sys.stderr)
        return
    state.live = live
    _senders.add(live.sender)
    weakref.finalize(run, live.sender.stop)  # the sender's thread ends with its run
    log_every = run.spec["train"]["log_every"]

    @trainer.on(Events.ITERATION_COMPLETED(every=log_every))
    def plot_training(engine):
        live.guard(live.training_rows, run, False)

    @trainer.on(Events.COMPLETED)
    def plot_rest(engine):
        live.guard(live.training_rows, run, True)

    @evaluator.on(Events.COMPLETED)
    def plot_test(engine):
        live.guard(live.test_accuracy, run, engine)


@hookimpl
def run_finished(run, results, settings, state):
    live = getattr(state, "live", None)
    if live is None:
        return
    live.sender.flush(settings.flush_seconds)
    results["visdom"] = live.summary()
