"""Which runs a report uses: each spec's completed runs in an artifacts folder, one per seed, of
the kind asked for (--quick or full protocol), full-protocol ones only if made as their spec
file says now; and the order of the report's sections (the homework's questions first).

Numbers come from the runs' summary.json files, never typed by hand.
"""
from __future__ import annotations

import re
import statistics
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .. import artifacts
from ..spec.loading import DESCRIPTIVE
from ..spec.overrides import chosen
from ..spec.overrides import read as read_overrides

# This project's own specs: the last place a run's spec file is looked for.
PROJECT_SPECS = Path(__file__).resolve().parents[2] / "specs"


def collect(out: Path) -> dict[str, list[dict]]:
    """spec name -> summaries of its completed runs (each with its folder), oldest first. A run
    whose summary.json or spec.toml is unreadable is left out, and said so once on stderr."""
    runs: dict[str, list[dict]] = {}
    for spec_dir in sorted(p for p in Path(out).iterdir() if p.is_dir()):
        for run_dir in artifacts.completed_runs(out, spec_dir.name):  # their summary.json reads
            try:
                summary = artifacts.read_json(run_dir / "summary.json")
                _readable_spec(run_dir / "spec.toml")
            except artifacts.Unreadable as exc:
                artifacts.skipped(exc)
                continue
            runs.setdefault(spec_dir.name, []).append(dict(summary, run_dir=str(run_dir)))
    return runs


def _readable_spec(path: Path) -> None:
    try:
        if path.is_file():
            tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise artifacts.Unreadable(path, f"is not TOML ({exc})") from None


def spec_path(summary: dict, out: Path) -> Path | None:
    """A run's spec file, or None. Older runs recorded it relative to the folder they ran in: try it
    as written (right when the report runs where the runs did), then relative to the artifacts
    folder's parent (the folder a run with the default --out ran in), then by name in this project's
    specs/ (its own specs, wherever they ran: another folder, the device machine's copy)."""
    if not summary.get("spec_file"):
        return None
    recorded = Path(summary["spec_file"])
    candidates = [recorded] + ([] if recorded.is_absolute() else [Path(out).resolve().parent / recorded])
    found = next((p for p in candidates + [PROJECT_SPECS / recorded.name] if p.is_file()), None)
    return found.resolve() if found else None  # one folder, however runs spelled it: its templates once each


def _comparable(values: dict) -> dict:
    """A resolved spec as the protocol sees it. Where the device and the data are is not the
    protocol (--device is routine), and paths are anchored in the checkout that made the run,
    so required specs and plugin files count by file name."""
    values = dict(values, requires=[Path(p).name for p in values.get("requires", [])])
    for key in DESCRIPTIVE:  # words about the spec, not its protocol
        values.pop(key, None)
    values.pop("device", None)
    values["data"] = {k: v for k, v in values.get("data", {}).items() if k != "root"}
    values["plugins"] = {name: dict(table, path=Path(table["path"]).name) if table.get("path") else table
                         for name, table in values.get("plugins", {}).items()}
    return values


def spec_changes(summary: dict, out: Path, catalogue) -> list[str]:
    """How a run's spec differs from its spec file's now, with the run's seed (a --set, or a spec
    edited since). Both are resolved by the current code, so a setting added since reads as its
    default; an older spec.toml the code no longer reads is compared on the keys both have.
    [] when they match or cannot be compared (no spec file, a spec file that no longer loads)."""
    from ..spec.loading import differences, load

    path, run_file = spec_path(summary, out), Path(summary["run_dir"]) / "spec.toml"
    if path is None or not run_file.is_file():
        return []
    seed = [] if summary.get("seed") is None else [f"seed={summary['seed']}"]
    try:
        now = tomllib.loads(load(path, catalogue, seed).dumps())
    except Exception as exc:  # a spec file broken or changed beyond loading: nothing to compare with
        print(f"report: cannot check {run_file.parent} against {path}: {exc}", file=sys.stderr)
        return []
    try:
        run, both = tomllib.loads(load(run_file, catalogue).dumps()), True
    except Exception:
        run, both = tomllib.loads(run_file.read_text()), False
    return [f"{key} = {was!r} (spec file: {is_now!r})"
            for key, was, is_now in differences(_comparable(run), _comparable(now), both)]


def protocol_runs(runs: dict[str, list[dict]], out: Path, catalogue) -> tuple[dict[str, list[dict]], list[str]]:
    """The runs whose spec is their spec file's (see spec_changes), and a note on each one left out.
    Quick runs stay: --quick's own overrides make every one differ, and their report says they are
    not results. Filtering before latest_per_seed lets an older matching run stand for its seed."""
    kept: dict[str, list[dict]] = {}
    notes: list[str] = []
    for name, summaries in runs.items():
        for summary in summaries:
            changes = [] if summary.get("quick") else spec_changes(summary, out, catalogue)
            if changes:
                notes.append(f"{name}/{Path(summary['run_dir']).name} ({'; '.join(changes)})")
            else:
                kept.setdefault(name, []).append(summary)
    return kept, notes


def latest_per_seed(summaries: list[dict], quick: bool) -> list[dict]:
    """One run per seed (the newest), of the wanted kind (quick or full protocol), lowest seed first."""
    by_seed = {}
    for summary in summaries:
        if bool(summary.get("quick")) == quick:
            by_seed[summary.get("seed")] = summary
    return [by_seed[seed] for seed in sorted(by_seed, key=lambda s: (s is None, s))]


QUESTION = re.compile(r"^P(\d+)\s*Q(\d+)\b")


def question_order(name: str, question: str) -> tuple:
    """The homework's questions first ("P1 Q1: ..." before "P1 Q2: ...", then P2, P3), then every
    other spec: those naming a part ("P2 fix: ...") by part, the rest after, each by name."""
    asked = QUESTION.match(question or "")
    if asked:
        return 0, int(asked[1]), int(asked[2]), name
    part = re.match(r"^P(\d+)\b", question or "")
    return 1, int(part[1]) if part else 99, 0, name


@dataclass
class SpecRuns:
    """One spec's runs in a report: `runs`, one per seed, lowest seed first; the first of them is
    the representative, which a spec's single numbers, figures and text come from (one rule for
    every table and text, so a report never quotes two seeds' values for one quantity)."""

    name: str
    runs: list[dict]
    spec: dict = field(default_factory=dict)  # the representative run's resolved spec.toml
    spec_file: Path | None = None

    @property
    def representative(self) -> dict:
        return self.runs[0]

    @property
    def run_dir(self) -> Path:
        return Path(self.representative["run_dir"])

    @property
    def question(self) -> str:
        return self.spec.get("question") or ""

    @property
    def title(self) -> str:
        """The spec's name in words (its spec file's `title`, which runs made before it was written
        lack), else its name."""
        if self.spec_file and self.spec_file.is_file():
            try:
                own = tomllib.loads(self.spec_file.read_text()).get("title")
            except (OSError, tomllib.TOMLDecodeError):
                own = None
            if isinstance(own, str) and own:
                return own
        return self.spec.get("title") or self.name

    @property
    def label(self) -> str:
        """"P1 Q2" of a question "P1 Q2: ...", else the text before the colon ("Beyond P2 Q1")."""
        asked = QUESTION.match(self.question)
        return asked[0] if asked else self.question.partition(":")[0]

    @property
    def is_question(self) -> bool:
        """Whether it answers one of the homework's questions ("P2 Q3: ..."), not a study beyond them."""
        return bool(QUESTION.match(self.question))

    @property
    def trained(self) -> bool:
        """Whether the spec trains its own model (an attack's evaluates another spec's)."""
        return bool(self.representative.get("iterations"))

    @property
    def plugins(self) -> list[str]:
        """The plugins its spec enables."""
        return [name for name, table in self.spec.get("plugins", {}).items()
                if isinstance(table, dict) and table.get("enabled", True)]

    def values(self, key: str) -> list:
        """`key` of every run (None where a run lacks it)."""
        return [summary.get(key) for summary in self.runs]

    def mean_sd(self, key: str = "test_accuracy") -> tuple[float | None, float | None]:
        """Mean over the runs and their sd (None for one run; both None when a run lacks the key)."""
        values = self.values(key)
        if not values or any(v is None for v in values):
            return None, None
        return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None

    def class_accuracy(self) -> list[float | None]:
        """Per-class test accuracy (summary.json's per_class), mean over the runs that recorded it;
        [] when none did."""
        recorded = [s["per_class"]["accuracy"] for s in self.runs if s.get("per_class")]
        return [None if None in column else statistics.mean(column) for column in zip(*recorded)]

    def headline(self) -> tuple[str, float] | None:
        """An evaluate-only spec's own result instead of a test accuracy (an attack's fooled share:
        the `headline` a plugin sets in summary.json), mean over its runs; None without one."""
        own = [h for s in self.runs if isinstance(h := s.get("headline"), dict)
               and h.get("name") and h.get("value") is not None]
        if len(own) < len(self.runs):
            return None
        return own[0]["name"], statistics.mean(h["value"] for h in own)

    def metrics(self) -> dict | None:
        """The representative run's metrics.csv as columns (lists by name), or None without one."""
        from ..training.metrics import read_csv

        path = self.run_dir / "metrics.csv"
        if not path.is_file():
            return None
        try:
            return read_csv(path)
        except (ValueError, IndexError, UnicodeDecodeError) as exc:  # garbage, or cut short
            artifacts.skipped(artifacts.Unreadable(path, f"is not a metrics table ({type(exc).__name__}: {exc})"))
            return None

    def figure(self, file_name: str) -> Path | None:
        """A figure of the representative run, or None when it did not draw one."""
        path = self.run_dir / file_name
        return path if path.is_file() else None


class Runs(dict):
    """What a report is made from: spec name -> SpecRuns, in question order (see question_order).

    `quick`: whether these are --quick runs; `out`: the artifacts folder; `workdir`: a temporary
    folder for figures drawn while the report is made (gone when it is written)."""

    def __init__(self, specs: list[SpecRuns], *, quick: bool, out: Path, workdir: Path, left_out=(), sweeps=None):
        super().__init__((s.name, s) for s in sorted(specs, key=lambda s: question_order(s.name, s.question)))
        self.quick, self.out, self.workdir, self.left_out = quick, Path(out), Path(workdir), list(left_out)
        self.sweeps: dict[str, list[dict]] = dict(sweeps or {})  # spec -> its runs made with --set (see gather)

    def using(self, plugin: str) -> list[SpecRuns]:
        """The specs whose spec enables `plugin`, in question order."""
        return [s for s in self.values() if plugin in s.plugins]


def spec_table(summary: dict) -> dict:
    path = Path(summary["run_dir"]) / "spec.toml"
    return tomllib.loads(path.read_text()) if path.is_file() else {}


def user_overrides(summary: dict) -> list[str]:
    """The `key=value` texts a run's user chose (runner/spec/overrides.py: a --set, a sweep's
    point, a search trial's values), not its seed, device or --quick's own settings."""
    return chosen(read_overrides(summary.get("overrides")))


def gather(out: Path, quick: bool, catalogue) -> tuple[dict[str, list[dict]], list[str], dict[str, list[dict]]]:
    """The runs a report uses, notes on the full-protocol runs left out (see protocol_runs), and the
    runs made with --set (sweeps: spec name -> summaries, each with its `set` texts), which the
    report shows in tables of their own rather than mixing them with the spec's runs."""
    runs: dict[str, list[dict]] = {}
    left_out: list[str] = []
    swept: dict[str, list[dict]] = {}
    for name, summaries in collect(out).items():
        for summary in summaries:
            texts = user_overrides(summary)
            if texts and bool(summary.get("quick")) == quick:
                swept.setdefault(name, []).append(dict(summary, set=texts))
            elif not texts:
                runs.setdefault(name, []).append(summary)
    if not quick:
        runs, left_out = protocol_runs(runs, out, catalogue)
    for note in left_out:
        print(f"report: left out {note}: its spec is not its spec file's now", file=sys.stderr)
    return runs, left_out, swept


def spec_runs(runs: dict[str, list[dict]], quick: bool, out: Path) -> list[SpecRuns]:
    """Each spec with runs of the wanted kind, with its representative's spec and spec file."""
    found = []
    for name, summaries in runs.items():
        chosen = latest_per_seed(summaries, quick)
        if chosen:
            found.append(SpecRuns(name, chosen, spec_table(chosen[0]), spec_path(chosen[0], out)))
    return found
