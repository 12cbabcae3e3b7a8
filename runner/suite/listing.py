"""What `runner show`, `runner ls`, `runner compare` and the end of a suite print: specs and runs
as text tables. Reads run folders (artifacts.py) and specs; changes nothing."""
from __future__ import annotations

import statistics
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from .. import artifacts
from ..errors import RunnerError
from ..progress import duration
from ..results import headline
from ..spec.overrides import Override, shown
from ..spec.overrides import read as read_overrides

# ---- runner show --------------------------------------------------------------------------------

def resolved_with_origins(spec) -> str:
    """The resolved spec as TOML, each value with a comment saying who set it: a --set, --quick,
    the spec file, a file it extends, or the default."""
    chain = " <- ".join(_short(p) for p in reversed(spec.chain)) or _short(spec.path)
    lines = [f"# {spec.name}: resolved from {chain}"]
    if spec.get("question"):
        lines.append(f"# {spec['question']}")

    def origin(key: str) -> str:
        found = spec.set_by(key)
        if found is None:
            return "the file's name" if key == "name" else "default"
        if found.startswith("--"):  # an override's own account: runner/spec/overrides.py
            return found
        return _short(found) if Path(found).resolve() == Path(spec.path).resolve() else f"{_short(found)} (extends)"

    def table(values: dict, prefix: str) -> None:
        scalars = {k: v for k, v in values.items() if not isinstance(v, dict)}
        if prefix and (scalars or not values):
            lines.append(f"\n[{prefix.rstrip('.')}]")
        width = max((len(_assignment(k, v)) for k, v in scalars.items()), default=0)
        for key, value in scalars.items():
            lines.append(f"{_assignment(key, value):{width}}  # {origin(prefix + key)}")
        for key, value in values.items():
            if isinstance(value, dict):
                table(value, f"{prefix}{key}.")

    table(spec.values, "")
    return "\n".join(lines)


def _assignment(key: str, value) -> str:
    return f"{key} = {_toml(value)}"


def _toml(value) -> str:
    """A value as TOML on one line (tomli_w spreads arrays over lines)."""
    if isinstance(value, list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return tomli_w.dumps({"v": value}).strip()[len("v = "):]


def _short(path) -> str:
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# ---- runs ---------------------------------------------------------------------------------------

@dataclass
class RunInfo:
    dir: Path
    spec: str
    seed: int | None
    status: str
    summary: dict = field(default_factory=dict)
    overrides: list[Override] = field(default_factory=list)
    started: str = ""  # YYYY-MM-DD HH:MM:SS
    wall: float | None = None

    @property
    def result(self) -> str:
        figure = headline(self.summary)
        return figure.text() if figure else "-"


def read_run(run_dir: Path) -> RunInfo:
    """A run folder's row. artifacts.Unreadable when its status.json is garbage, or its summary.json
    is, or is missing from a run marked complete: such a run is no result to list or average."""
    status = artifacts.read_status(run_dir, strict=True)
    summary = artifacts.read_json(run_dir / "summary.json")
    if status["status"] == "complete" and not summary:
        raise artifacts.Unreadable(run_dir / "summary.json", "is missing, yet the run is marked complete")
    found = artifacts.RUN_ID.fullmatch(run_dir.name)
    started = (f"{found[1][:4]}-{found[1][4:6]}-{found[1][6:8]} {found[1][9:11]}:{found[1][11:13]}:{found[1][13:15]}"
               if found else "")
    wall = summary.get("wall_seconds")
    if wall is None and started and status.get("time"):
        try:  # an unfinished run: from its start to its last status
            begin = time.mktime(time.strptime(started, "%Y-%m-%d %H:%M:%S"))
            wall = time.mktime(time.strptime(status["time"], "%Y-%m-%dT%H:%M:%S")) - begin
        except ValueError:
            wall = None
    return RunInfo(dir=run_dir, spec=run_dir.parent.name, seed=artifacts.run_seed(run_dir), status=status["status"],
                   summary=summary, overrides=read_overrides(summary.get("overrides", status.get("overrides", []))),
                   started=started, wall=wall)


def find_runs(out, specs=None, statuses=None) -> list[RunInfo]:
    """Every run folder in OUT (OUT/<spec>/<run id>), oldest first; filtered by spec and status."""
    out = Path(out)
    if not out.is_dir():
        raise RunnerError(f"no folder {out}: give the --out your runs went to (default: artifacts)")
    runs = []
    for spec_dir in sorted(p for p in out.iterdir() if p.is_dir() and not p.name.startswith("_")):
        if specs and spec_dir.name not in specs:
            continue
        for run_dir in spec_dir.iterdir():
            if (run_dir / artifacts.STATUS_FILE).is_file():
                info = _readable(run_dir)
                if info is not None and (not statuses or info.status in statuses):
                    runs.append(info)
    return sorted(runs, key=lambda info: (info.started, info.dir.name))


def _readable(run_dir: Path) -> RunInfo | None:
    """read_run, or None after saying on stderr which file is unreadable."""
    try:
        return read_run(run_dir)
    except artifacts.Unreadable as exc:
        artifacts.skipped(exc)
        return None


def runs_table(runs: list[RunInfo]) -> str:
    rows = [(f"{info.spec}/{info.dir.name}", str(info.seed), info.status, info.result,
             " ".join(shown(info.overrides)) or "-", info.started, duration(info.wall) if info.wall else "-")
            for info in runs]
    return _table(("run", "seed", "status", "result", "overrides", "started", "wall"), rows)


def runs_of(targets, out) -> list[RunInfo]:
    """The runs a `runner compare` argument names: a run folder, a folder of runs, or a spec (its
    file or name: its completed runs in OUT)."""
    runs: list[RunInfo] = []
    for target in targets:
        path = Path(target)
        if (path / artifacts.STATUS_FILE).is_file():
            runs += filter(None, [_readable(path)])
        elif path.is_dir() and any((child / artifacts.STATUS_FILE).is_file() for child in path.iterdir()
                                   if child.is_dir()):
            runs += find_runs(path.parent, specs=[path.name])  # one spec's folder of runs
        elif path.is_dir():
            runs += find_runs(path, statuses=["complete"])
        else:
            name = path.stem if path.suffix == ".toml" else str(target)
            found = find_runs(out, specs=[name], statuses=["complete"]) if Path(out).is_dir() else []
            if not found:
                raise RunnerError(f"{target}: not a run folder, a folder of runs, or a spec with completed runs "
                                  f"in {out} (give --out, or see `runner ls {out}`)")
            runs += found
    return runs


def compare_table(runs: list[RunInfo]) -> str:
    """One row per group of runs that share every setting but the seed: the settings in which the
    groups differ, then the result (mean ± sd over seeds), seconds and the runs. A study's runs
    (runner SPEC --search) are ranked: the best trial's test runs first, then the trials by the
    held-out accuracy they were chosen by; a trial never groups with the test runs of its values,
    which trained on more images."""
    runs, flat = _with_specs(runs)
    if not runs:
        return "no runs to compare"
    keys = sorted({key for values in flat for key in values})
    # The spec's name heads each row; its question and seed would only repeat what the name says.
    differing = ["name"] + [key for key in keys if key not in ("name", "question", "seed")
                            and len({_toml_or_none(values.get(key)) for values in flat}) > 1]
    searched = any(info.summary.get("search") for info in runs)
    groups: dict[tuple, list[RunInfo]] = {}
    for info, values in zip(runs, flat):
        key = (info.spec, *([search_role(info.summary)] if searched else []),
               *(_toml_or_none(values.get(key)) for key in differing[1:]))
        groups.setdefault(key, []).append(info)
    ranked = []  # (rank, row)
    for group_key, members in groups.items():
        figures = [headline(info.summary) for info in members]
        measured = [f.value for f in figures if f and f.value is not None]
        name = next((f.name for f in figures if f), "result")
        result = "-" if not measured else (f"{name} {statistics.mean(measured):.4f}" + (
            f" ± {statistics.stdev(measured):.4f}" if len(measured) > 1 else ""))
        seconds = [f.seconds for f in figures if f and f.seconds]
        held_out = (members[0].summary.get("search") or {}).get("validation_accuracy")  # a trial's group is itself
        ranked.append((_study_rank(group_key[1], held_out) if searched else (), (
            group_key[0], *(_short_number(text) for text in group_key[1:]),
            *([f"{held_out:.4f}" if held_out is not None else "-"] if searched else []),
            result, str(len(members)), ",".join(str(info.seed) for info in members),
            duration(statistics.mean(seconds)) if seconds else "-",
            " ".join(sorted({t for info in members for t in shown(info.overrides)})) or "-")))
    rows = [row for _, row in sorted(ranked, key=lambda pair: pair[0])]  # stable: run order without a study
    header = ("spec", *(["search"] if searched else []), *differing[1:], *(["held-out"] if searched else []),
              "result (mean ± sd)", "runs", "seeds", "seconds", "overrides")
    note = (f"{len(runs)} runs in {len(groups)} groups" + (f", differing in: {', '.join(differing[1:])}"
                                                          if differing[1:] else ", the same settings but the seed"))
    return note + "\n" + _table(header, rows)


def search_role(summary: dict) -> str:
    """"trial 4", "test of trial 4" (the best trial's values on the test set), or "" (no study's run)."""
    search = summary.get("search") or {}
    if search.get("role") == "test":
        return f"test of trial {search.get('best_trial', '?')}"
    return f"trial {search['trial']}" if "trial" in search else ""


def _study_rank(role: str, held_out: float | None) -> tuple:
    """Test runs first, then trials by their held-out accuracy, best first; other runs last."""
    kind = 0 if role.startswith("test") else 1 if role else 2
    return kind, -held_out if held_out is not None else 0.0


def _short_number(text: str) -> str:
    """A setting's TOML text as a table shows it: a float to 4 significant digits."""
    try:
        value = float(text)
    except ValueError:
        return text
    return f"{value:.4g}" if "." in text or "e" in text else text


def _with_specs(runs: list[RunInfo]) -> tuple[list[RunInfo], list[dict]]:
    """The runs whose spec.toml reads, each with its settings flat; the others are told and left out."""
    kept, flat = [], []
    for info in runs:
        try:
            flat.append(_flatten(_spec_table(info.dir)))
            kept.append(info)
        except artifacts.Unreadable as exc:
            artifacts.skipped(exc)
    return kept, flat


def _spec_table(run_dir: Path) -> dict:
    """A run's resolved spec.toml; {} without one, artifacts.Unreadable when it is not TOML."""
    path = run_dir / "spec.toml"
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise artifacts.Unreadable(path, f"is not TOML ({exc})") from None


def _flatten(table: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _toml_or_none(value) -> str:
    return "-" if value is None else _toml(value)


# ---- the end of a suite -------------------------------------------------------------------------

def outcome_table(outcomes) -> str:
    """One line per run (its own result: an attack's fooled share, not its source model's accuracy),
    then the mean and spread over seeds of each spec (and sweep point) that ran several."""
    rows: list[tuple[str, ...]] = []
    by_group: dict[tuple[str, tuple[str, ...], str], list[float]] = {}  # (spec, sweep, measure) -> values over seeds
    outcomes = sorted(outcomes, key=lambda o: (o.job.name, o.job.seed, o.job.sweep))
    swept = any(outcome.job.sweep for outcome in outcomes)
    for outcome in outcomes:
        job, figure = outcome.job, headline(outcome.summary)
        if figure and figure.value is not None:
            by_group.setdefault((job.name, job.sweep, figure.name), []).append(figure.value)
        rows.append((job.name, str(job.seed), *([" ".join(job.sweep) or "-"] if swept else []),
                     figure.text() if figure else "-", f"{figure.seconds:.1f}" if figure and figure.seconds else "-",
                     f"{figure.per_second:.0f}" if figure and figure.per_second else "-", outcome.status))
    header = ("spec", "seed", *(["sweep"] if swept else []), "result", "seconds", "images/s", "status")
    lines = ["", _table(header, rows)]
    for (name, sweep, measure), values in by_group.items():
        if len(values) > 1:
            lines.append(f"{name}{''.join(' ' + s for s in sweep)}: {measure} mean {statistics.mean(values):.4f} "
                         f"± {statistics.stdev(values):.4f} (sd over {len(values)} seeds)")
    return "\n".join(lines)


def _table(header, rows) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    line = lambda cells: "  ".join(str(cell).ljust(width) for cell, width in zip(cells, widths)).rstrip()
    return "\n".join([line(header), *map(line, rows)])
