"""Run folders and atomic writes: nothing half-written ever looks complete.

artifacts/<spec name>/<run id>/ holds spec.toml, metrics.csv, summary.json, model.pt, figures
and status.json, whose "status" is running, complete, failed, diverged or interrupted.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from .errors import RunnerError

STATUS_FILE = "status.json"
# Room kept in a running run's folder so that, when the disk fills, its status can still say
# "failed" and why: deleted to make that room, and when the run ends.
STATUS_ROOM = ".status_room"
STATUS_ROOM_BYTES = 64 * 1024
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class WriteError(RunnerError):
    """A run file could not be written (disk full, read-only folder, ...): which file, where, why."""

    def __init__(self, path, cause: OSError):
        self.path, self.cause = Path(path), cause
        reason = cause.strerror or str(cause)
        super().__init__(f"cannot write {self.path.name} in {self.path.parent}: {reason}")

    @property
    def disk_full(self) -> bool:
        return self.cause.errno in DISK_FULL


class Unreadable(RunnerError):
    """A run file that is there but cannot be read as what it should be (garbage, cut short)."""

    def __init__(self, path, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{self.path} {reason}")


_told: set[str] = set()


def skipped(exc: Unreadable) -> None:
    """Say once per process that a run is left out because one of its files is unreadable."""
    if str(exc.path) not in _told:
        _told.add(str(exc.path))
        print(f"skipped: {exc}", file=sys.stderr)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once: reading it means setting it, which would race with threads creating files.
FILE_MODE = 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; rename it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise WriteError(path, exc) from exc
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, FILE_MODE)  # mkstemp makes 0600; a result file gets the usual mode
        os.replace(tmp, path)
    except OSError as exc:
        raise WriteError(path, exc) from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path, data) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def save_torch(path, obj) -> None:
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        # A file object of our own: closed on a failed write, so deleting it frees its space at once
        # (torch's own writer would stay open while the exception's traceback holds it).
        try:
            torch.save(obj, file)
        except RuntimeError as exc:  # torch's writer, failing to finish a file its write left short
            if isinstance(exc.__context__, OSError):
                raise exc.__context__ from None  # the write's own error: disk full, say
            raise


def save_figure(path, figure) -> None:
    """Writes a matplotlib figure (its format by the path's suffix, PNG without one) and closes
    it, written or not: a figure left open holds its memory until the process ends."""
    import matplotlib.pyplot as plt  # already imported by whoever drew the figure

    try:
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", dpi=120, bbox_inches="tight")
    finally:
        plt.close(figure)


# A run folder's name: start time, seed, and a counter when one second saw several runs.
RUN_ID = re.compile(r"(\d{8}-\d{6})-s(-?\d+)(?:-(\d+))?")


def _started(run_dir: Path) -> tuple:
    """Sort key, oldest first: the folder's time and counter (sorting names as text put -s10 before -s2)."""
    found = RUN_ID.fullmatch(run_dir.name)
    return (found[1], int(found[3] or 0)) if found else ("", 0)


def started_after(run_dir, other) -> bool:
    """Whether run folder `run_dir` was started after `other` (their names' time and counter)."""
    return _started(Path(run_dir)) > _started(Path(other))


def run_seed(run_dir: Path) -> int | None:
    found = RUN_ID.fullmatch(Path(run_dir).name)
    return int(found[2]) if found else None


def new_run_dir(out: Path, spec_name: str, seed: int) -> Path:
    """A fresh folder named by time and seed; a counter keeps two runs in one second apart."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(out) / spec_name
    try:
        base.mkdir(parents=True, exist_ok=True)
        for counter in range(1000):
            run_id = f"{stamp}-s{seed}" + (f"-{counter}" if counter else "")
            with contextlib.suppress(FileExistsError):
                (base / run_id).mkdir()
                return base / run_id
    except OSError as exc:  # read-only, full, a file where a folder should be
        raise RunnerError(f"cannot make a run folder in {base}: {exc.strerror or exc}; give --out a folder "
                          f"you can write to") from exc
    raise RuntimeError(f"cannot create a run folder under {base}")


# Facts about the run, not about one status: every later status keeps them.
KEPT = ("quick", "pid", "data", "overrides")


def set_status(run_dir, status: str, **extra) -> None:
    """Write status.json. A running run keeps STATUS_ROOM beside it; a write the full disk refuses
    is tried again once that room is freed, so a failed run still says "failed" and why."""
    run_dir = Path(run_dir)
    try:
        before = read_json(run_dir / STATUS_FILE)
    except Unreadable:
        before = {}
    kept = {key: before[key] for key in KEPT if key in before}
    record = {"status": status, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **kept, **extra}
    try:
        write_json(run_dir / STATUS_FILE, record)
    except WriteError as exc:
        if not exc.disk_full or not (run_dir / STATUS_ROOM).is_file():
            raise
        (run_dir / STATUS_ROOM).unlink()
        write_json(run_dir / STATUS_FILE, record)
    if status == "running":
        _keep_room(run_dir / STATUS_ROOM)
    else:
        (run_dir / STATUS_ROOM).unlink(missing_ok=True)


def _keep_room(path: Path) -> None:
    """Hold STATUS_ROOM_BYTES of written blocks (a sparse file would hold none); not an error
    where there is no room for it: the run's own writes will say so."""
    try:
        with open(path, "wb") as file:
            file.write(bytes(STATUS_ROOM_BYTES))
    except OSError:
        path.unlink(missing_ok=True)


def read_json(path) -> dict:
    """A run file's JSON object, {} when it does not exist; Unreadable when it is there but no
    JSON object (garbage, cut short, not text)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except UnicodeDecodeError:
        raise Unreadable(path, "is not text") from None
    except OSError as exc:
        raise Unreadable(path, f"cannot be read ({exc.strerror or exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise Unreadable(path, f"is not JSON (line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise Unreadable(path, "is not a JSON object")
    return data


def read_status(run_dir, strict: bool = False) -> dict:
    """The run's status; a "running" run whose process is gone (killed) reads as "interrupted".
    An unreadable status.json reads as "unknown", with the reason under "unreadable" (strict:
    raises Unreadable)."""
    try:
        status = read_json(Path(run_dir) / STATUS_FILE)
    except Unreadable as exc:
        if strict:
            raise
        return {"status": "unknown", "unreadable": str(exc)}
    if not status:
        return {"status": "unknown"}
    if status.get("status") == "running" and not _alive(status.get("pid")):
        status = dict(status, status="interrupted", stale=True)
    return status


def _alive(pid) -> bool:
    if not isinstance(pid, int):
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _runs(out, spec_name: str, statuses: tuple[str, ...], seed: int | None, quick: bool | None) -> list[Path]:
    """Run folders of a spec in these statuses, oldest first; with seed or quick, only those runs."""
    base = Path(out) / spec_name
    if not base.is_dir():
        return []
    found = []
    for run_dir in base.iterdir():
        if not run_dir.is_dir() or (seed is not None and run_seed(run_dir) != seed):
            continue
        status = read_status(run_dir)
        if status.get("status") in statuses and (quick is None or bool(status.get("quick")) == quick):
            if status["status"] == "complete" and not _has_summary(run_dir):
                continue  # marked complete, yet its results are unreadable: not a result to use
            found.append(run_dir)
    return sorted(found, key=_started)


def _has_summary(run_dir: Path) -> bool:
    try:
        return bool(read_json(run_dir / "summary.json"))
    except Unreadable as exc:
        skipped(exc)
        return False


def unfinished_runs(out, spec_name: str, seed: int | None = None, quick: bool | None = None) -> list[Path]:
    """Runs of a spec that stopped before completing (interrupted, failed), oldest first."""
    return _runs(out, spec_name, ("interrupted", "failed"), seed, quick)


def completed_runs(out: str | Path, spec_name: str, seed: int | None = None) -> list[Path]:
    """Completed runs of a spec, oldest first."""
    return _runs(out, spec_name, ("complete",), seed, None)


def latest_run(out, spec_name: str, quick: bool | None = None, seed: int | None = None) -> Path | None:
    """The newest completed run of a spec; with `quick`, only runs made with (or without) --quick;
    with `seed`, only that seed's."""
    for run_dir in reversed(completed_runs(out, spec_name, seed)):
        summary = read_summary(run_dir)
        if summary and (quick is None or bool(summary.get("quick")) == quick):
            return run_dir
    return None


def source_run(out, spec_name: str, quick: bool, seed: int) -> Path | None:
    """The run of `spec_name` a run of `seed` takes another spec's model from (plugins/fgsm.py and
    the suite's up-to-date check): its latest completed run of that seed, else of any seed."""
    return latest_run(out, spec_name, quick, seed=seed) or latest_run(out, spec_name, quick)


def read_summary(run_dir) -> dict:
    """summary.json, or {} when it is missing or unreadable (read_json tells which)."""
    try:
        return read_json(Path(run_dir) / "summary.json")
    except Unreadable:
        return {}
