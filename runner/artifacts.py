"""Run folders and atomic writes: nothing half-written ever looks complete.

artifacts/<spec name>/<run id>/ holds spec.toml, metrics.csv, summary.json, model.pt, figures
and status.json, whose "status" is running, complete, failed, diverged or interrupted.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import time
from pathlib import Path

STATUS_FILE = "status.json"


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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, FILE_MODE)  # mkstemp makes 0600; a result file gets the usual mode
        os.replace(tmp, path)
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

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_figure(path, figure) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", dpi=120, bbox_inches="tight")


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
    base.mkdir(parents=True, exist_ok=True)
    for counter in range(1000):
        run_id = f"{stamp}-s{seed}" + (f"-{counter}" if counter else "")
        try:
            (base / run_id).mkdir()
            return base / run_id
        except FileExistsError:
            continue
    raise RuntimeError(f"cannot create a run folder under {base}")


# Facts about the run, not about one status: every later status keeps them.
KEPT = ("quick", "pid", "data", "overrides")


def set_status(run_dir, status: str, **extra) -> None:
    try:
        before = json.loads((Path(run_dir) / STATUS_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        before = {}
    kept = {key: before[key] for key in KEPT if key in before}
    write_json(Path(run_dir) / STATUS_FILE,
               {"status": status, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **kept, **extra})


def read_status(run_dir) -> dict:
    """The run's status; a "running" run whose process is gone (killed) reads as "interrupted"."""
    try:
        status = json.loads((Path(run_dir) / STATUS_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
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
            found.append(run_dir)
    return sorted(found, key=_started)


def unfinished_runs(out, spec_name: str, seed: int | None = None, quick: bool | None = None) -> list[Path]:
    """Runs of a spec that stopped before completing (interrupted, failed), oldest first."""
    return _runs(out, spec_name, ("interrupted", "failed"), seed, quick)


def completed_runs(out: Path, spec_name: str, seed: int | None = None) -> list[Path]:
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
    try:
        return json.loads((Path(run_dir) / "summary.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
