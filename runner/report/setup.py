"""The training setup of each part of the report, from the runs' resolved specs: what every net
of a part shares (optimizer, schedule, regularization, batch, iterations) as one table, and what
differs between them as another. Plugins add their rows through the describe_setup hook, so a
plugin that only watches a run (live plots, gradient logging) stays out."""
from __future__ import annotations

import re

from ..errors import RunnerError
from .collect import Runs, SpecRuns
from .document import Table

DEFAULT_INIT = "PyTorch's default (Kaiming uniform, a = sqrt(5))"


def part_of(spec: SpecRuns) -> int | None:
    """The homework part a spec belongs to: "P2" anywhere in its question."""
    found = re.search(r"\bP(\d+)\b", spec.question)
    return int(found[1]) if found else None


def _number(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _transforms(spec: dict) -> str:
    names = spec.get("data", {}).get("transforms", [])
    shown = []
    for name in names:
        settings = spec.get("transforms", {}).get(name, {})
        extra = ", ".join(f"{k} {_number(v)}" for k, v in settings.items() if k != "enabled")
        shown.append(name + (f" ({extra})" if extra else ""))
    return " then ".join(shown) or "none (raw pixel values 0-255)"


def _model(spec: dict) -> dict[str, str]:
    """The model as rows: its name, then one row per setting, so a table of what differs between
    nets shows only the settings that do."""
    model = dict(spec.get("model", {}))
    rows = {"model": model.pop("name", "?")}
    for key, value in model.items():
        rows[f"model: {key.replace('_', ' ')}"] = ("/".join(map(str, value)) if isinstance(value, list)
                                                   else _number(value))
    return rows


def rows_of(spec: SpecRuns, catalogue) -> dict[str, str]:
    """One trained spec's setup, row name -> text."""
    table = spec.spec
    train = table.get("train", {})
    optimizer = train.get("optimizer", "?")
    if optimizer == "sgd":
        optimizer = f"SGD, momentum {_number(train.get('momentum'))}" + (", Nesterov" if train.get("nesterov") else "")
    warmup = train.get("warmup") or 0
    schedule = train.get("schedule", "constant")
    rows = {
        **_model(table),
        "augmentation (in order)": _transforms(table),
        "optimizer": optimizer,
        "learning rate": f"peak {_number(train.get('lr'))}"
                         + (f", linear warmup over the first {warmup:.0%}" if warmup else "")
                         + {"constant": ", then constant", "linear": ", then linear decay to 0",
                            "cosine": ", then cosine decay to 0"}.get(schedule, f", then {schedule}"),
        "weight decay": _number(train.get("weight_decay", 0)),
        "label smoothing": _number(train.get("label_smoothing", 0)),
        "batch size x iterations": f"{train.get('batch_size')} x {train.get('iterations')} "
                                   f"({len(table.get('data', {}).get('train', []))} training batch"
                                   f"{'es' if len(table.get('data', {}).get('train', [])) != 1 else ''})",
        "gradient-norm cap": _number(train["clip_grad_norm"]) if train.get("clip_grad_norm") else "none",
        "initialization": DEFAULT_INIT,
    }
    for name in spec.plugins:
        if name not in catalogue.origins:
            continue
        try:
            described = catalogue.hooks({name: table["plugins"][name]}).describe_setup()
        except RunnerError:
            described = None
        for rows_of_plugin in described or []:
            rows.update(rows_of_plugin or {})
    return rows


def setup_tables(runs: Runs, part: int, catalogue) -> list[Table]:
    """The part's shared setup (setting, value) and, where its nets differ, a table of the
    differences (net, then one column per differing setting)."""
    specs = [s for s in runs.values() if s.trained and part_of(s) == part]
    if not specs:
        return []
    described = {s.name: rows_of(s, catalogue) for s in specs}
    keys = list(dict.fromkeys(k for rows in described.values() for k in rows))
    shared = [k for k in keys if len({rows.get(k, "none") for rows in described.values()}) == 1]
    differing = [k for k in keys if k not in shared]
    tables = [Table(["setting", "value"], [[k, described[specs[0].name][k]] for k in shared],
                    f"Training setup shared by every Part {part} net in this report"
                    + (" (what differs follows)." if differing else "."))]
    if differing:
        tables.append(Table(["net"] + differing,
                            [[f"{s.label}, {s.title}"]
                             + [described[s.name].get(k, "none") for k in differing] for s in specs],
                            f"What differs between the Part {part} nets.", small=True))
    return tables
