"""The report's content: a title page, an overview, one section per spec in question order (its
question, the answer from its explanation template, its results, what its plugins add through
the report_sections hook), and an appendix of settings and architecture tables.

Nothing here knows a particular spec: sections follow the specs' `question` keys, answers their
explanation templates, and the rest comes from the runs and the plugins.
"""
from __future__ import annotations

import datetime
import platform
import subprocess
import sys
from pathlib import Path

from ..errors import RunnerError
from .collect import QUESTION, Runs, SpecRuns
from .document import Document, Figure, Paragraph, Section, Table, blocks_from_text
from .templates import accuracy_text, explanations, template_fields


def say(message: str) -> None:
    print(f"report: {message}", file=sys.stderr, flush=True)


def pct(value) -> str:
    return "–" if value is None else f"{value:.1%}"


def build(runs: Runs, catalogue) -> Document:
    contributed = plugin_sections(runs, catalogue)
    added: dict[str, dict] = {}
    for section in contributed:
        if section.spec:
            added.setdefault(section.spec, {}).update(section.fields)
    answers = explanations(runs, template_fields(runs, added))
    sections = [overview(runs)]
    for name, spec in runs.items():
        section = spec_section(spec, answers.get(name))
        extra = [block for s in contributed if s.spec == name for block in s.blocks]
        # Text and tables first, then every figure, so figures pair up side by side.
        blocks = section.blocks + extra
        section.blocks = [b for b in blocks if not isinstance(b, Figure)] + [b for b in blocks if isinstance(b, Figure)]
        sections.append(section)
    sections += [s for s in contributed if not s.spec]
    if runs.sweeps:
        sections.append(sweeps_section(runs))
    say("architecture tables")
    return Document("Experiment report", title_facts(runs), quick_warning(runs), sections,
                    appendix(runs, catalogue)).number()


def sweeps_section(runs: Runs) -> Section:
    """One table per spec run with --set (a sweep's points, or one-off changes): each setting's
    values, then the result over the seeds of each point."""
    import statistics

    from ..results import headline

    blocks = []
    for name, summaries in sorted(runs.sweeps.items()):
        points: dict[tuple, list[dict]] = {}
        for summary in summaries:
            points.setdefault(tuple(sorted(summary["set"])), []).append(summary)
        keys = sorted({text.split("=", 1)[0] for point in points for text in point})
        rows = []
        for point, members in sorted(points.items()):
            values = dict(text.split("=", 1) for text in point)
            figures = [headline(m) for m in members]
            results = [f.value for f in figures if f and f.value is not None]
            measure = next((f.name for f in figures if f), "result")
            mean = statistics.mean(results) if results else None
            sd = statistics.stdev(results) if len(results) > 1 else None
            text = "–" if mean is None else f"{pct(mean)}" + (f" ± {pct(sd)}" if sd is not None else "")
            rows.append([values.get(key, "(spec file)") for key in keys]
                        + [str(len(members)), ", ".join(str(m.get("seed")) for m in members), f"{measure} {text}"])
        blocks.append(Table(keys + ["runs", "seeds", "result (mean ± sd)"], rows,
                            f"{name} run with --set: each point's settings and its result over seeds "
                            f"(these runs are not in the spec's own section).", small=True))
    return Section("Sweeps and other --set runs", blocks)


def plugin_sections(runs: Runs, catalogue) -> list[Section]:
    """What every plugin adds (the report_sections hook); a plugin that fails is named and left out."""
    found = []
    for name in catalogue.origins:
        try:
            answer = catalogue.call(name, "report_sections", runs=runs)
        except RunnerError as exc:
            say(f"left out plugin {name!r}'s sections: {exc}")
            continue
        for section in answer or []:
            if section.spec and section.spec not in runs:
                continue  # about a spec this report has no runs of
            found.append(section)
    return found


def quick_warning(runs: Runs) -> str:
    return ("Made from --quick smoke runs (a few iterations on a subset of the images): the numbers "
            "test the pipeline and are not results." if runs.quick else "")


def label(question: str) -> str:
    """"P1 Q2" of "P1 Q2: normalize ...", else the text before the colon (or the whole question)."""
    asked = QUESTION.match(question)
    return asked[0] if asked else question.partition(":")[0]


def spec_section(spec: SpecRuns, answer: str | None) -> Section:
    runs = spec.runs
    seeds = ", ".join(str(s.get("seed")) for s in runs)
    subtitle = f"spec {spec.name}; {len(runs)} run{'s' if len(runs) > 1 else ''} (seed{'s' if len(runs) > 1 else ''} {seeds})"
    section = Section(title=spec.question or spec.name, spec=spec.name, subtitle=subtitle)
    if answer:
        section.blocks += blocks_from_text(answer)
    if spec.trained:
        section.blocks.append(Paragraph(results_sentence(spec)))
        shown = f"seed {spec.representative.get('seed')}"
        if path := spec.figure("training_accuracy.png"):
            section.blocks.append(Figure(path, f"Training accuracy of {spec.name} over iterations ({shown}): each "
                                               "batch, and running over the last epoch; dashed: test accuracy.", 0.33))
        if path := spec.figure("confusion_matrix.png"):
            section.blocks.append(Figure(path, f"Confusion matrix of {spec.name} on the test images ({shown}): "
                                               "rows are the true class, columns the predicted one.", 0.33))
    return section


def results_sentence(spec: SpecRuns) -> str:
    mean, sd = spec.mean_sd()
    text = f"**Results.** Test accuracy {accuracy_text(mean, sd, len(spec.runs))}"
    if len(spec.runs) > 1:
        text += " (per seed " + ", ".join(pct(v) for v in spec.values("test_accuracy")) + ")"
    train, _ = spec.mean_sd("final_running_train_accuracy")
    if train is not None:
        text += f"; final running training accuracy {pct(train)}"
    seconds, _ = spec.mean_sd("seconds")
    if seconds is not None:
        text += f"; {seconds:.0f} s of training per run on {spec.representative.get('device', '?')}"
    return text + "."


def overview(runs: Runs) -> Section:
    """Every spec's headline numbers, and every trained spec's per-class test accuracy."""
    rows = []
    for name, spec in runs.items():
        mean, sd = spec.mean_sd()
        seconds, _ = spec.mean_sd("seconds") if spec.trained else (None, None)
        own = None if spec.trained else spec.headline()
        result = (accuracy_text(mean, sd, len(spec.runs)).split(" (")[0] if spec.trained and mean is not None
                  else f"none of its own ({own[0]} {own[1]:.1%})" if own else "evaluates another spec's model")
        rows.append([label(spec.question) if spec.question else "", name, str(len(spec.runs)), result,
                     f"{seconds:.0f}" if seconds is not None else "–"])
    blocks = [Table(["question", "spec", "seeds", "test accuracy (mean ± sd)", "training s per run"], rows,
                    "Every spec in this report, in question order. Attacks and other evaluate-only specs train "
                    "nothing and have no test accuracy of their own; their results are in their sections.",
                    small=True)]
    trained = [spec for spec in runs.values() if spec.trained and spec.representative.get("per_class")]
    if trained:
        classes = trained[0].representative["per_class"]["classes"]
        per_class = [[spec.name] + [pct(v) for v in spec.class_accuracy()] for spec in trained]
        blocks.append(Table(["spec"] + classes, per_class,
                            "Per-class test accuracy of every trained spec (the share of each class's test images "
                            "classified correctly, mean over seeds).", small=True))
    return Section("Overview", blocks)


def _when(spec: SpecRuns) -> list[datetime.datetime]:
    """When each run was made: its run id starts with the date and time (YYYYMMDD-HHMMSS)."""
    found = []
    for summary in spec.runs:
        stem = Path(summary["run_dir"]).name[:15]
        try:
            found.append(datetime.datetime.strptime(stem, "%Y%m%d-%H%M%S"))
        except ValueError:
            pass
    return found


def _checkout() -> str:
    """This checkout's commit (and whether it has uncommitted changes), or "" outside git."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"], capture_output=True,
                                text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return commit.stdout.strip() if commit.returncode == 0 else ""


def _counted(values: list) -> str:
    counts: dict = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return ", ".join(f"{value} ({n} run{'s' if n > 1 else ''})" for value, n in counts.items())


def title_facts(runs: Runs) -> list[tuple[str, str]]:
    summaries = [s for spec in runs.values() for s in spec.runs]
    when = sorted(t for spec in runs.values() for t in _when(spec))
    kind = "--quick smoke runs" if runs.quick else "full-protocol runs"
    facts = [("what was run", f"{len(runs)} specs, {len(summaries)} {kind} (the newest completed run of each "
                              f"seed) from {runs.out.resolve()}")]
    if when:
        facts.append(("when", f"{when[0]:%Y-%m-%d %H:%M} to {when[-1]:%Y-%m-%d %H:%M} (run ids)"))
    facts.append(("machine", _counted([f"{s.get('device', '?')}, {s.get('threads', '?')} thread"
                                       f"{'' if s.get('threads') == 1 else 's'}, torch {s.get('torch', '?')}"
                                       for s in summaries])))
    facts.append(("code version of the runs", _counted([s.get("code_version", "?") for s in summaries])))
    checkout = _checkout()
    facts.append(("report made", f"{datetime.datetime.now():%Y-%m-%d %H:%M} on {platform.node() or '?'}"
                                 + (f" by checkout {checkout}" if checkout else "")))
    if runs.left_out:
        facts.append(("left out", f"{len(runs.left_out)} run(s) whose spec differs from their spec file's now "
                                  "(made with --set, or before the spec changed): "
                                  + ", ".join(note.partition(" (")[0] for note in runs.left_out)))
    return facts


def _value(value) -> str:
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


def settings_row(spec: SpecRuns, catalogue) -> list[str]:
    """A spec's model, transforms, training and plugins, each plugin with the settings it changes
    from the plugin's defaults (a plugin at its defaults, as visdom is, is its name alone)."""
    table = spec.spec
    model, train, data = table.get("model", {}), table.get("train", {}), table.get("data", {})
    model_text = model.get("name", "?") + "".join(f"; {k} {_value(v)}" for k, v in model.items() if k != "name")
    plugins = []
    for name in spec.plugins:
        defaults = catalogue.settings_of(name) if name in catalogue.origins else {}
        changed = {k: v for k, v in table["plugins"][name].items() if k not in ("enabled", "path")
                   and (k not in defaults or defaults[k].default != v)}
        plugins.append(name + (" (" + "; ".join(f"{k} {_value(v)}" for k, v in changed.items()) + ")" if changed else ""))
    if train.get("iterations"):
        training = f"{train['iterations']} it. at batch {train.get('batch_size')}, {train.get('optimizer')} lr {train.get('lr')}"
        model_shown = model_text
    else:
        training, model_shown = "evaluate only", "another spec's trained model"
    return [spec.name, model_shown, ", ".join(data.get("transforms", [])) or "none", training,
            ", ".join(plugins) or "none"]


def architecture(spec: SpecRuns, catalogue) -> tuple[list[str], list[list[str]]] | None:
    """The spec's trained model as a layer table (None for evaluate-only specs, or a model that no
    longer builds: a plugin no longer installed, say)."""
    from ..architecture import table
    from ..builders import build_model
    from ..spec import load

    if not spec.trained:
        return None
    try:
        return table(build_model(load(spec.run_dir / "spec.toml", catalogue), catalogue))
    except Exception as exc:
        say(f"no architecture table for {spec.name}: {exc}")
        return None


def collapse_repeats(rows: list[list[str]], longest: int = 8) -> list[list[str]]:
    """Layer rows with a run of repeated layers (the same few rows again and again, as 20 inserted
    convs are) shown once, followed by a row saying how many more times it repeats; the first
    column (the row number) is not compared."""
    out, i = [], 0
    while i < len(rows):
        for size in range(1, longest + 1):
            pattern = [row[1:] for row in rows[i:i + size]]
            times = 1
            while [row[1:] for row in rows[i + times * size:i + (times + 1) * size]] == pattern:
                times += 1
            if times >= 3:
                end = i + times * size
                out += rows[i:i + size]
                out.append(["", f"(the {size} row{'s' if size > 1 else ''} above {times - 1} more times: "
                                f"rows {i + size + 1}-{end})"] + [""] * (len(rows[i]) - 2))
                i = end
                break
        else:
            out.append(rows[i])
            i += 1
    return out


def appendix(runs: Runs, catalogue) -> list[Section]:
    settings = Table(["spec", "model", "transforms", "training", "plugins (settings)"],
                     [settings_row(spec, catalogue) for spec in runs.values()],
                     "Each spec's settings, as its representative run resolved them (spec.toml in its run folder); "
                     "each plugin with the settings it changes from its defaults.", small=True)
    # Specs with the same layers (Part 1's four nets, say) share one table.
    groups: dict[tuple, list[str]] = {}
    tables: dict[tuple, tuple] = {}
    built: dict[str, tuple | None] = {}  # specs with the same model and plugins have the same layers
    for name, spec in runs.items():
        same = repr((spec.spec.get("model"), spec.spec.get("plugins"), spec.trained))
        found = built[same] if same in built else built.setdefault(same, architecture(spec, catalogue))
        if found:
            key = tuple(map(tuple, found[1]))
            groups.setdefault(key, []).append(name)
            tables[key] = found
    blocks = []
    for key, names in groups.items():
        header, rows = tables[key]
        blocks.append(Table(header, collapse_repeats(rows), "Architecture of " + ", ".join(names) + ": every module "
                            "the forward pass calls, in order (· marks a layer inside a residual block; a run of "
                            "repeated layers is shown once, with its count).", small=True))
    return [Section("Appendix: settings", [settings]), Section("Appendix: architectures", blocks)]
