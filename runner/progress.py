"""Progress of long work: a bar in a terminal, plain lines with an ETA when output is a file or pipe.

Plugins use it too (`runner.progress.Progress`), so an attack shows images done and fooled so
far the way training shows its iterations:

    with Progress(len(images), "fgsm", unit="images") as bar:
        for batch in batches:
            ...
            bar.update(len(batch), fooled=f"{fooled}/{done}")
"""
from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tqdm import tqdm as Tqdm


def is_terminal(stream=None) -> bool:
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def in_notebook() -> bool:
    """Running in a Jupyter kernel (the test tqdm.auto makes), where a bar is a widget: stderr is
    no terminal there, yet a bar is what the reader wants."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def duration(seconds: float | None) -> str:
    """12 s, 3:05, 1:02:09: how long, in the shortest form that reads at a glance."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02}:{seconds:02}" if hours else f"{minutes}:{seconds:02}"


def notice(text: str, stream=None) -> None:
    """Print a line of news (a plugin's warning, a run's end) without breaking a progress bar: a
    bar being drawn on the stream is cleared, the line written, and the bar redrawn below it
    (tqdm's own write, which holds tqdm's lock, so a notice from another thread is safe too)."""
    from tqdm import tqdm

    stream = stream or sys.stderr
    tqdm.write(text, file=stream)
    stream.flush()


class Progress:
    """How far `total` units of work have got: update(n, **figures) as units are done.

    In a terminal (or with interactive=True) one tqdm bar redrawn in place, with rate and ETA (in
    a Jupyter notebook, writing to stderr: tqdm.auto's widget bar); otherwise a line at every
    tenth of the work (and at the end), each with rate and ETA, so a log shows both how far a run
    got and when it will end.
    """

    def __init__(self, total: int, desc: str, *, unit: str = "it", interactive: bool | None = None,
                 stream=None, initial: int = 0, lines: int = 10):
        self.total, self.desc, self.unit, self.done = total, desc, unit, initial
        self.stream = stream or sys.stderr
        notebook = stream is None and in_notebook()
        self.interactive = (is_terminal(self.stream) or notebook) if interactive is None else interactive
        self.started, self.start_count = time.perf_counter(), initial
        self.figures: dict = {}
        self._step = max(1, total // lines)
        self._next_line = (initial // self._step + 1) * self._step
        self._bar: Tqdm | None = None  # tqdm is imported only when a bar is drawn
        if self.interactive and notebook:
            from tqdm.auto import tqdm as notebook_tqdm

            self._bar = notebook_tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=True, smoothing=0.1)
        elif self.interactive:
            from tqdm import tqdm

            # A terminal that reports no size (a pty nobody sized) would get a bar tqdm hides.
            sized = _columns(self.stream) > 0
            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=self.stream, leave=True,
                             dynamic_ncols=sized, ncols=None if sized else 100, nrows=None if sized else 24,
                             smoothing=0.1)

    def update(self, n: int = 1, **figures) -> None:
        self.done += n
        self.figures.update(figures)
        if self._bar is not None:
            if figures:
                self._bar.set_postfix({k: _short(v) for k, v in self.figures.items()}, refresh=False)
            self._bar.update(n)
        elif self.done >= self._next_line or self.done >= self.total:
            self._next_line = (self.done // self._step + 1) * self._step
            print(self.line(), file=self.stream, flush=True)

    def rate(self) -> float | None:
        elapsed = time.perf_counter() - self.started
        return (self.done - self.start_count) / elapsed if elapsed > 0 and self.done > self.start_count else None

    def line(self) -> str:
        """'[desc] 400/2000 it (20%), 6.1 it/s, ETA 4:22, loss 1.23': the plain form."""
        rate = self.rate()
        eta = (self.total - self.done) / rate if rate else None
        share = f" ({self.done / self.total:.0%})" if self.total else ""
        parts = [f"[{self.desc}] {self.done}/{self.total} {self.unit}{share}"]
        if rate:
            parts.append(f"{rate:.1f} {self.unit}/s")
        parts.append("done in " + duration(time.perf_counter() - self.started) if self.done >= self.total
                     else f"ETA {duration(eta)}")
        parts += [f"{key} {_short(value)}" for key, value in self.figures.items()]
        return ", ".join(parts)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _columns(stream) -> int:
    import os

    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 0


class SuiteDisplay:
    """A suite's progress, as `on_event` for an executor: k of N runs done, which are running and
    for how long, and an ETA from the times of the same specs' earlier runs in OUT.

    Started and finished runs are told as lines. With `live` (worker processes, whose output goes
    to their logs, and a terminal), a status line under them is redrawn every second; only this
    process writes to the terminal, so lines never interleave.
    """

    def __init__(self, plan, at_once: int, *, live: bool = False, stream=None):
        import threading

        self.stream = stream or sys.stderr
        self.total, self.at_once, self.live = len(plan.jobs), max(1, at_once), live
        self.expected = dict(plan.expected)
        self.waiting = set(plan.jobs)
        self.running: dict = {}  # job -> start time
        self.taken: list[float] = []  # seconds of the runs finished now
        self.finished = 0
        self._lock = threading.Lock()
        self._shown = False
        self._stop = threading.Event()
        if live and self.total:
            threading.Thread(target=self._redraw_every_second, daemon=True).start()

    def __call__(self, kind: str, job, outcome=None) -> None:
        with self._lock:
            if kind == "started":
                self.waiting.discard(job)
                self.running[job] = time.perf_counter()
                self._say(f"[{job.name}] seed {job.seed}{_sweep_text(job)} started ({self.finished}/{self.total} "
                          f"done, {self._eta_text()})")
            else:
                self.waiting.discard(job)
                started = self.running.pop(job, None)
                self.finished += 1
                if started is not None:
                    self.taken.append(time.perf_counter() - started)
                self._say(self._finished_line(job, outcome))

    def _finished_line(self, job, outcome) -> str:
        from .results import headline

        where = f"[{job.name}] seed {job.seed}{_sweep_text(job)}"
        count = f" [{self.finished}/{self.total}]"
        if outcome.status == "not run":
            return f"[{job.name}] not run: {outcome.error}{count}"
        if not outcome.ok:
            return f"{where} {outcome.status} after {duration(outcome.seconds)}: {outcome.error}{count}"
        figure = headline(outcome.summary)
        result = f": {figure.text()}" if figure else ""
        return f"{where} done in {duration(outcome.seconds)}{result}{count}, {self._eta_text()}"

    def _eta_text(self) -> str:
        eta = self.eta()
        return "suite ETA known after the first run" if eta is None else f"suite ETA {duration(eta)}"

    def eta(self) -> float | None:
        """Seconds until the last run ends, if runs keep going `at_once` at a time."""
        known = [s for s in self.expected.values() if s > 0] + self.taken
        guess = sum(known) / len(known) if known else None
        now = time.perf_counter()
        left = [self.expected.get(job) or guess for job in self.waiting]
        left += [max((self.expected.get(job) or guess or 0) - (now - start), 0) for job, start in self.running.items()]
        known_left = [s for s in left if s is not None]
        if len(known_left) < len(left):
            return None
        count = len(self.waiting) + len(self.running)
        return sum(known_left) / min(self.at_once, count) if count else 0.0

    def status(self) -> str:
        now = time.perf_counter()
        running = ", ".join(f"{job.name} {duration(now - start)}" for job, start in self.running.items()) or "-"
        return f"suite: {self.finished}/{self.total} done; running: {running}; {self._eta_text()[len('suite '):]}"

    def _say(self, line: str) -> None:
        if self.live:
            self.stream.write("\r\033[K")  # the status line goes; the event takes its place
        print(line, file=self.stream, flush=not self.live)
        if self.live:
            self._draw()

    def _draw(self) -> None:
        columns = _columns(self.stream) or 100
        self.stream.write("\r\033[K" + self.status()[:columns - 1])
        self.stream.flush()
        self._shown = True

    def _redraw_every_second(self) -> None:
        while not self._stop.wait(1.0):
            with self._lock:
                self._draw()

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            if self.live and self._shown:
                self.stream.write("\r\033[K")
                self.stream.flush()


def _sweep_text(job) -> str:
    return "".join(f" {text}" for text in job.sweep)
