"""For a plugin's author: `runner new plugin NAME` (a plugin, a spec that enables it and a test that
passes as written) and `runner plugins NAME` (one plugin's help, hooks and settings table)."""
from __future__ import annotations

import importlib.util
import keyword
import os
from pathlib import Path

from .errors import RunnerError

# The spec a new plugin's spec extends: Part 1 Q1's recipe (the Table 1 net on raw pixels).
HOMEWORK_SPEC = Path(__file__).resolve().parents[1] / "specs" / "p1_q1_raw.toml"


class ScaffoldError(RunnerError):
    """A NAME or folder `runner new` cannot use: a usage error."""

    exit_code = 2


PLUGIN = '''\
"""{name}: a runner plugin. It records the norm of the model's weights every few iterations, adds
the last value to summary.json and writes a paragraph into `runner report`.

    runner {name}.toml --quick               a 12-iteration run with it (--data PATH: offline CIFAR-10)
    python -m pytest test_{name}.py          its tests, on a tiny synthetic data set
    runner plugins {name}.py                 its hooks and settings

Every hook is listed in runner/plugin_host/hookspecs.py; docs/plugins.md is the guide.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from ignite.engine import Events

from runner import Plugin, hookimpl, setting


@dataclass(frozen=True)
class Settings:
    # Each field is a key of a spec's [plugins.{name}] table, checked when the spec loads.
    every: int = setting(10, "iterations between records", min=1, quick=2)


plugin = Plugin(settings=Settings, help="the norm of the model's weights over training")


@hookimpl
def attach(trainer, run, settings, state):
    """Before training: attach Ignite handlers. `state` keeps objects for this run's later hooks."""
    state.weights = [p for p in run.model.parameters() if p.dim() > 1]  # conv and linear weights

    @trainer.on(Events.ITERATION_COMPLETED(every=settings.every))
    def record(engine):
        norm = torch.stack([w.detach().norm() for w in state.weights]).norm()  # stays on the device
        run.metrics.add("{name}/weight_norm", engine.state.iteration, norm)  # a column of metrics.csv


@hookimpl
def run_finished(run, results, state):
    """After training and evaluation: what goes into `results` is written to summary.json."""
    recorded = [v for v in run.metrics.table().get("{name}/weight_norm", []) if v == v]  # NaN: no record
    results["{name}"] = {{"records": len(recorded), "final_weight_norm": recorded[-1] if recorded else None}}


@hookimpl
def report_sections(specs):
    """`runner report`: a paragraph in the section of each reported spec that enables this plugin."""
    from runner.report import Paragraph, Section

    sections = []
    for spec in specs:
        final = (spec.representative.get("{name}") or {{}}).get("final_weight_norm")
        if final is not None:
            sections.append(Section(spec=spec.name, blocks=[Paragraph(
                f"The norm of the weights at the end of training: {{final:.3g}}.")]))
    return sections
'''

SPEC = '''\
# Part 1 Q1's recipe with the {name} plugin on:  runner {name}.toml [--quick] [--data PATH]
extends = "{extends}"

[plugins.{name}]
path = "{name}.py"  # relative to this file
every = 10
'''

# Where the runner's own specs are not on disk (a wheel install), the new spec extends this one.
BASE_SPEC = '''\
# The Table 1 net on raw pixels (Part 1 Q1's recipe), for {name}.toml to extend.
[data]
train = ["data_batch_1"]
test = ["test_batch"]

[model]
name = "table1"

[train]
iterations = 2000
batch_size = 100
lr = 0.05
'''

TEST = '''\
"""Tests of the {name} plugin on a tiny synthetic data set (no CIFAR-10 needed), a few seconds each.

The fixtures come with runner (a pytest plugin, runner.testing): run_plugin runs a plugin file in
a small spec, run_spec a spec file; both return the run's summary, metrics and folder (dir).
"""


def test_records_the_weight_norm(run_plugin):
    result = run_plugin("{name}.py", settings={{"every": 5}}, iterations=20)
    column = result.metrics["{name}/weight_norm"]
    assert [i for i, value in zip(result.metrics["iteration"], column) if value == value] == [5, 10, 15, 20]
    assert result.summary["{name}"]["records"] == 4
    assert result.summary["{name}"]["final_weight_norm"] > 0


def test_the_spec_runs_it(run_spec):
    # every = 10 in the spec: one record in 10 iterations (of a narrower net, which is quicker)
    result = run_spec("{name}.toml", iterations=10, set={{"model.widths": [8, 8, 16]}})
    assert result.summary["{name}"]["records"] == 1
'''


def check_name(name: str, taken=()) -> None:
    """A plugin's name is a Python identifier that neither a plugin nor an importable module has."""
    if not name.isidentifier() or keyword.iskeyword(name):
        raise ScaffoldError(f"plugin name {name!r} is not a Python identifier: use letters, digits and "
                            f"underscores, not starting with a digit (e.g. {_identifier(name)!r})")
    if name in taken:
        raise ScaffoldError(f"a plugin named {name!r} exists already (`runner plugins {name}` shows it); "
                            "pick another name")
    try:
        shadowed = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        shadowed = None
    if shadowed is not None:
        raise ScaffoldError(f"plugin name {name!r} is the name of an importable module ({shadowed.origin}), "
                            f"which {name}.py would hide in its own folder; pick another name")


def _identifier(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c == "_" else "_" for c in name.strip()).strip("_") or "my_plugin"
    return cleaned if not cleaned[0].isdigit() else f"plugin_{cleaned}"


def new_plugin(name: str, folder=None, taken=()) -> list[Path]:
    """Write NAME.py, NAME.toml and test_NAME.py into `folder` (default: ./NAME); the paths written.
    Refuses to overwrite a file: nothing is written if any of them exists."""
    check_name(name, taken)
    folder = Path(folder) if folder is not None else Path.cwd() / name
    if folder.exists() and not folder.is_dir():
        raise ScaffoldError(f"{folder} is a file; give --dir a folder (new or existing)")
    files = {folder / f"{name}.py": PLUGIN.format(name=name), folder / f"test_{name}.py": TEST.format(name=name)}
    if HOMEWORK_SPEC.is_file():
        extends = _relative_or_absolute(HOMEWORK_SPEC, folder)
    else:
        extends = f"{name}_base.toml"
        files[folder / extends] = BASE_SPEC.format(name=name)
    files[folder / f"{name}.toml"] = SPEC.format(name=name, extends=extends)
    existing = [path for path in files if path.exists()]
    if existing:
        raise ScaffoldError(f"{', '.join(map(str, existing))} {'exists' if len(existing) == 1 else 'exist'} already; "
                            f"runner new never overwrites: remove {'it' if len(existing) == 1 else 'them'}, or give "
                            "another --dir or NAME")
    folder.mkdir(parents=True, exist_ok=True)
    for path, text in files.items():
        path.write_text(text)
    return list(files)


def _relative_or_absolute(target: Path, folder: Path) -> str:
    """target relative to folder when both are in one project (a clone of runner), else absolute."""
    root = target.parents[1]
    folder = folder.resolve()
    if folder == root or root in folder.parents:
        return Path(os.path.relpath(target, folder)).as_posix()
    return target.as_posix()


def next_steps(name: str, written: list[Path]) -> str:
    """What `runner new plugin` prints: the files, then the commands to type next."""
    folder = written[0].parent
    try:
        shown = folder.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        shown = folder
    lines = [f"wrote {shown / path.name}" for path in written]
    lines += ["", "next:"]
    if str(shown) != ".":
        lines.append(f"  cd {shown}")
    commands = [("python -m pytest -q", "its tests, on synthetic data (a few seconds)"),
                (f"runner {name}.toml --quick", "a 12-iteration run on CIFAR-10 (--data PATH: an offline copy)"),
                (f"runner plugins {name}.py", "its hooks and settings"),
                ("runner report --quick -o report.html", "those runs as a report, with its paragraph")]
    width = max(len(command) for command, _ in commands)
    lines += [f"  {command.ljust(width)}   {what}" for command, what in commands]
    return "\n".join(lines)


# ---- runner plugins NAME ------------------------------------------------------------------------

def describe_plugin(catalogue, name: str) -> str:
    """One plugin: origin, help, hooks, settings table, and the models and transforms it registers."""
    from .plugin_host.declaration import TABLE_KEYS

    declared = catalogue.declarations[name]
    lines = [f"{name}  ({catalogue.origins[name]})"]
    if declared.help:
        lines.append(f"  {declared.help}")
    flags = [text for on, text in ((declared.default_enabled, "on unless a spec turns it off"),
                                   (declared.run_model, f"its run's model is the trained model of the spec "
                                                        f"its setting {declared.run_model!r} names")) if on]
    lines += [f"  {flag}" for flag in flags]
    lines.append(f"hooks: {', '.join(catalogue.hooks_of(name)) or '-'}")
    settings = catalogue.settings_of(name)
    if settings:
        lines.append(f"settings (a spec's [plugins.{name}] table; it also takes {' and '.join(TABLE_KEYS)}):")
        rows = [["key", "type", "default", "--quick", "allowed", "help"]]
        rows += [[key, type_name(s), _toml(s.default), "-" if s.quick is None else _toml(s.quick), allowed(s), s.help]
                 for key, s in settings.items()]
        lines += ["  " + line for line in _columns(rows)]
    else:
        lines.append(f"settings: none (a spec's [plugins.{name}] table takes {' and '.join(TABLE_KEYS)})")
    for kind, table in (("model", catalogue.models), ("transform", catalogue.transforms)):
        for entry in table.values():
            if entry.plugin == name:
                lines.append(f"{kind} {entry.name}: {entry.help}")
    return "\n".join(lines)


def type_name(setting) -> str:
    kind = setting.kind
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = [getattr(k, "__name__", str(k)) for k in kinds]
    if list in kinds and setting.item is not None:
        names[kinds.index(list)] = f"list[{setting.item.__name__}]"
    return " | ".join(names)


def allowed(setting) -> str:
    """Choices, bounds (of each element, for a list), length and what a value names, in words."""
    parts = []
    if setting.choices is not None:
        parts.append(", ".join(_toml(choice) for choice in setting.choices))
    if setting.min is not None and setting.max is not None:
        parts.append(f"{_toml(setting.min)} to {_toml(setting.max)}")
    elif setting.min is not None:
        parts.append(f">= {_toml(setting.min)}")
    elif setting.max is not None:
        parts.append(f"<= {_toml(setting.max)}")
    if setting.length is not None:
        parts.append(f"{setting.length[0]} to {setting.length[1]} elements")
    if setting.reads:
        parts.append(f"names specs (their {setting.reads})")
    return "; ".join(parts) or "-"


def _toml(value) -> str:
    from .suite.listing import _toml as one_line

    try:
        return one_line(value)
    except TypeError:
        return repr(value)


def _columns(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1] for row in rows]
