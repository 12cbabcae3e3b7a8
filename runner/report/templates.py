"""Explanation templates: the answers' prose, with the numbers filled in from the runs.

A template is a `*_explanation.md` file beside the specs. Each `## <spec name>` heading starts the
answer for that spec's section; its text may use str.format fields: `{spec.key}` is the key of a
spec's representative run summary (its lowest seed; `{spec.key.sub}` and `{spec.key[1]}` reach into
tables), and besides the summary's keys every spec has

- `accuracy_mean`, `accuracy_sd` (0 for one run), `seeds`: its test accuracy over its seeds;
- `accuracy`: those as text, "66.1% ± 0.4% (3 seeds)" or "66.1% (1 seed)";
- `train_accuracy_mean`: its final running training accuracy, mean over seeds, and `gap`: that
  minus the mean test accuracy (the overfitting);

- `vs`: the spec against any other in the report, `{this.vs.other.test_word}` ("higher than",
  "lower than", "about the same as": see compare.py), `.test_change`, `.train_word`, `.gap_word`:
  a comparative sentence written with these follows the numbers, whichever way they fall;

and whatever fields plugins add for it (their report_sections). HTML comments are left out. A
section whose spec has no runs in the report is skipped silently; a paragraph with a field without
a value (a run it quotes is missing) is left out and named on stderr.
"""
from __future__ import annotations

import re
import string
import sys
from pathlib import Path

from ..results import headline
from .collect import Runs, SpecRuns
from .compare import compare


class Fields(dict):
    """Values for str.format templates: {spec.key.sub} and {spec.key[1]} both work."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, key):
        value = super().__getitem__(str(key) if str(key) in self else key)
        return Fields(value) if isinstance(value, dict) and not isinstance(value, Fields) else value


class Comparisons(Fields):
    """`{spec.vs.other...}`: one spec compared with each other spec of the report, on first use."""

    def __init__(self, spec: SpecRuns, runs: Runs):
        super().__init__()
        self.spec, self.runs = spec, runs

    def __missing__(self, other):
        if other not in self.runs:
            raise KeyError(other)
        self[other] = compare(self.spec, self.runs[other])
        return super().__getitem__(other)


def accuracy_text(mean: float, sd: float | None, seeds: int) -> str:
    return f"{mean:.1%}" + (f" ± {sd:.1%} ({seeds} seeds)" if sd is not None else " (1 seed)")


def own_result_text(spec: SpecRuns) -> str | None:
    """An evaluate-only spec's own result, mean over its runs, as its plugin's headline gives it:
    "fooled 98.0%", or "saliency-perturbation correlation 0.452" for a value that is no fraction;
    None without one."""
    own = spec.headline()
    if not own:
        return None
    figure = headline(spec.representative)
    return f"{own[0]} {figure.value_text(own[1])}" if figure else None


def spec_fields(spec: SpecRuns) -> dict:
    """One spec's own fields (see the module's docstring)."""
    mean, sd = spec.mean_sd("test_accuracy")
    train, _ = spec.mean_sd("final_running_train_accuracy")
    fields = dict(spec.representative, seeds=len(spec.runs), accuracy_mean=mean, accuracy_sd=sd or 0.0,
                  train_accuracy_mean=train)
    fields["accuracy"] = accuracy_text(mean, sd, len(spec.runs)) if mean is not None else None
    fields["gap"] = train - mean if train is not None and mean is not None else None
    return fields


def template_fields(runs: Runs, added: dict[str, dict] | None = None) -> Fields:
    """Every spec's fields, with the fields plugins added for it (`added`: spec name -> fields)."""
    fields = {name: dict(spec_fields(spec), vs=Comparisons(spec, runs)) for name, spec in runs.items()}
    for name, extra in (added or {}).items():
        fields.setdefault(name, {}).update(extra)
    return Fields(fields)


def missing_fields(text: str, fields: Fields) -> list[str]:
    """The fields of a template text without a value: no run behind them, None, or unformattable."""
    formatter, missing = string.Formatter(), []
    for _, name, spec, _ in formatter.parse(text):
        if name is None:
            continue
        try:
            value, _ = formatter.get_field(name, (), fields)
            if value is None:  # "{x}" would print None
                raise ValueError
            format(value, spec or "")
        except (KeyError, AttributeError, IndexError, TypeError, ValueError):
            if name not in missing:
                missing.append(name)
    return missing


def sections(path: Path) -> dict[str, str]:
    """A template's answers by spec name, unfilled, comments removed."""
    text = re.sub(r"<!--.*?-->", "", path.read_text(), flags=re.S)  # comments may hold braces
    found = {}
    for section in re.split(r"(?m)^(?=## )", text):
        if section.startswith("## "):
            heading, _, body = section.partition("\n")
            found[heading[3:].strip()] = body.strip()
    return found


def fill_text(text: str, fields: Fields, what: str, where: str = "") -> str:
    """A template text filled; a paragraph with a field without a value is left out and named."""
    kept = []
    for paragraph in re.split(r"\n\s*\n", re.sub(r"<!--.*?-->", "", text, flags=re.S).strip()):
        missing = missing_fields(paragraph, fields)
        if missing:
            names = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
            print(f"report: {where}left out a paragraph of {what} ({paragraph.strip()[:40]!r}...): "
                  f"no value for {names}", file=sys.stderr)
        else:
            kept.append(paragraph.format_map(fields).strip())
    return "\n\n".join(kept)


def fill_template(path: Path, fields: Fields, specs=None) -> dict[str, str]:
    """The template's answers filled (spec name -> text), for the specs in `specs` (default: every
    spec with fields). A paragraph with a field without a value is left out, and named on stderr:
    one missing number (runs made before it was recorded) costs its paragraph, not the answer."""
    wanted = set(fields if specs is None else specs)
    filled = {}
    for name, body in sections(path).items():
        if name not in wanted or not body:
            continue
        text = fill_text(body, fields, f"the answer for {name}", f"{path.name}: ")
        if text:
            filled[name] = text
    return filled


def explanations(runs: Runs, fields: Fields) -> dict[str, str]:
    """spec name -> its filled answer, from every *_explanation.md beside the runs' spec files."""
    folders = sorted({spec.spec_file.parent for spec in runs.values() if spec.spec_file})
    found: dict[str, str] = {}
    for folder in folders:
        for path in sorted(folder.glob("*_explanation.md")):
            for name, text in fill_template(path, fields, runs).items():
                found.setdefault(name, text)
    return found
