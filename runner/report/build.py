"""The report's content: a title page, an overview, one section per spec in question order (its
question, the answer from its explanation template, its results, what its plugins add through
the report_sections hook), and an appendix of settings and architecture tables.

Nothing here knows a particular spec: sections follow the specs' `question` keys, answers their
explanation templates, and the rest comes from the runs and the plugins.
"""
from __future__ import annotations

import datetime
import os
import sys
from pathlib import Path

from ..errors import RunnerError
from ..results import DASH, percent
from .collect import Runs, SpecRuns
from .config import ReportConfig
from .document import Bullets, Document, Figure, Paragraph, Section, Table, blocks_from_text
from .setup import part_of, setup_tables
from .templates import accuracy_text, explanations, fill_text, own_result_text, template_fields


def say(message: str) -> None:
    print(f"report: {message}", file=sys.stderr, flush=True)


def build(runs: Runs, catalogue, config: ReportConfig | None = None, where: Path | None = None) -> Document:
    """The report's document; `where` is the folder the report is written to, which the provenance
    names the runs' folder relative to."""
    config = config or ReportConfig()
    contributed = plugin_sections(runs, catalogue)
    added: dict[str, dict] = {}
    for section in contributed:
        if section.spec:
            added.setdefault(section.spec, {}).update(section.fields)
    fields = template_fields(runs, added)
    answers = explanations(runs, fields)
    sections = [overview(runs)]
    parts_done: set = set()
    shown = Shown()
    for name, spec in runs.items():
        answer = answers.get(name)
        if not answer and not runs.quick:  # a smoke test's report shows every spec it ran
            say(f"left out {name}: no answer in its explanation template explains its runs")
            continue
        section = spec_section(spec, answer or "", shown, runs.workdir)
        part = part_of(spec)
        if part is not None and part not in parts_done:
            parts_done.add(part)
            section.blocks[:0] = setup_tables(runs, part, catalogue)
        if spec.trained and spec.is_question and (layers := shown.architecture(spec, catalogue)):
            section.blocks.append(layers)
        extra = [block for s in contributed if s.spec == name for block in s.blocks]
        # Text and tables first, then every figure, so figures pair up side by side.
        blocks = section.blocks + extra
        section.blocks = [b for b in blocks if not isinstance(b, Figure)] + [b for b in blocks if isinstance(b, Figure)]
        sections.append(section)
    sections += [s for s in contributed if not s.spec]
    from .search import report_sections as search_sections  # trials and their test runs: not sweeps

    sections += search_sections(runs)
    runs.sweeps = {name: kept for name, found in runs.sweeps.items()
                   if (kept := [s for s in found if not s.get("search")])}
    if runs.sweeps:
        sections.append(sweeps_section(runs))
    if config.conclusion:
        text = fill_text(config.conclusion, fields, "the conclusion")
        if text:
            sections.append(Section("Conclusion", blocks_from_text(text)))
    if config.references:
        sections.append(Section("References", [Bullets([f"[{i}] {r}" for i, r in enumerate(config.references, 1)])]))
    return Document(config.title, title_facts(config), quick_warning(runs), sections,
                    appendix(runs, where)).number()


class Shown:
    """What earlier sections already show, so a later one refers to it instead of repeating it:
    each architecture's layer table, and each training curve (a spec that trains exactly as an
    earlier one, as Q2 does Q1's net with its gradients logged, gets a sentence, not the same plot)."""

    def __init__(self):
        self.layers: set = set()
        self.curves: dict[tuple, str] = {}

    def architecture(self, spec: SpecRuns, catalogue) -> Table | None:
        found = architecture(spec, catalogue)
        if found is None or (key := repr(found[1])) in self.layers:
            return None
        self.layers.add(key)
        header, rows = found
        return Table(header, collapse_repeats(rows), f"Architecture of {spec.title}: every module the forward pass "
                     "calls, in order (· marks a layer inside a residual block; a run of repeated layers is shown "
                     "once, with its count).", small=True)

    def curve(self, spec: SpecRuns) -> str | None:
        """The title of an earlier spec whose runs trained exactly as this one's, else None (and
        this one is remembered)."""
        key = tuple((s.get("seed"), s.get("final_loss"), s.get("test_accuracy")) for s in spec.runs)
        if key in self.curves:
            return self.curves[key]
        self.curves[key] = spec.title
        return None


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
        for point, unordered in sorted(points.items()):
            # By seed: runs started in the same second have no order of their own.
            members = sorted(unordered, key=lambda m: str(m.get("seed")).zfill(12))
            values = dict(text.split("=", 1) for text in point)
            figures = [headline(m) for m in members]
            results = [f.value for f in figures if f and f.value is not None]
            shown = next((f for f in figures if f), None)
            mean = statistics.mean(results) if results else None
            sd = statistics.stdev(results) if len(results) > 1 else None
            text = DASH if mean is None or shown is None else shown.value_text(mean) + (
                f" ± {shown.value_text(sd)}" if sd is not None else "")
            measure = shown.name if shown else "result"
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
            answer = catalogue.hooks({name: None}).report_sections(runs=runs, specs=runs.using(name))
            answer = answer[0] if answer else None
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


def spec_section(spec: SpecRuns, answer: str, shown: Shown, workdir: Path) -> Section:
    runs = spec.runs
    seeds = ", ".join(str(s.get("seed")) for s in runs)
    subtitle = (f"{spec.title}: {len(runs)} run{'s' if len(runs) > 1 else ''} (seed{'s' if len(runs) > 1 else ''} "
                f"{seeds}) of specs/{spec.name}.toml")
    section = Section(title=spec.question or spec.name, spec=spec.name, subtitle=subtitle)
    section.blocks += blocks_from_text(answer)
    if spec.trained:
        section.blocks.append(Paragraph(results_sentence(spec)))
        same = shown.curve(spec)
        if same:
            section.blocks.append(Paragraph(f"It trains exactly as {same} (the same losses and test accuracy for "
                                            "every seed), so its training curve is that section's."))
        elif figure := training_figure(spec, workdir):
            section.blocks.append(figure)
    return section


def training_figure(spec: SpecRuns, workdir: Path) -> Figure | None:
    """The representative run's training accuracy, drawn for the page from its metrics.csv."""
    from .. import artifacts
    from ..training import figures

    table = spec.metrics()
    if table is None:
        return None
    seed = spec.representative.get("seed")
    # A question's plot spans the page; a study's takes half of it, drawn half as wide.
    width, size = (1.0, (7, 2.2)) if spec.is_question else (0.5, (3.5, 2.4))
    figure = figures.training_accuracy(table, "", spec.representative.get("test_accuracy"), size=size)
    path = workdir / f"training_{spec.name}.png"
    artifacts.save_figure(path, figure)
    return Figure(path, f"Training accuracy of {spec.title} over iterations (seed {seed}): each batch, and "
                        "running over the last epoch (100 iterations); dashed: its test accuracy.", width)


def results_sentence(spec: SpecRuns) -> str:
    mean, sd = spec.mean_sd()
    assert mean is not None  # a trained spec's every run records its test accuracy
    text = f"**Results.** Test accuracy {accuracy_text(mean, sd, len(spec.runs))}"
    if len(spec.runs) > 1:
        text += " (per seed " + ", ".join(percent(v) for v in spec.values("test_accuracy")) + ")"
    train, _ = spec.mean_sd("final_running_train_accuracy")
    if train is not None:
        text += f"; final running training accuracy {percent(train)}"
    seconds, _ = spec.mean_sd("seconds")
    if seconds is not None:
        text += f"; {seconds:.0f} s of training per run on {spec.representative.get('device', '?')}"
    return text + "."


BUSY = 0.25  # cores other processes kept busy while a run trained, above which its seconds are not a quiet machine's


def seconds_text(spec: SpecRuns) -> str:
    """Training seconds per run (mean), marked * when any run trained beside other work and ? when
    a run did not record how busy the machine was."""
    seconds, _ = spec.mean_sd("seconds")
    if seconds is None:
        return "–"
    other = spec.values("other_work_cores")
    mark = "*" if any(v is not None and v > BUSY for v in other) else "?" if any(v is None for v in other) else ""
    return f"{seconds:.0f}{mark}"


def overview(runs: Runs) -> Section:
    """Every spec's headline number and training seconds, in question order."""
    rows = []
    for spec in runs.values():
        mean, sd = spec.mean_sd()
        own = None if spec.trained else own_result_text(spec)
        result = (accuracy_text(mean, sd, len(spec.runs)).split(" (")[0] if spec.trained and mean is not None
                  else own or "evaluates another net")
        rows.append([spec.label, spec.title, str(len(spec.runs)), result,
                     seconds_text(spec) if spec.trained else "–"])
    return Section("Overview", [Table(
        ["question", "net", "seeds", "result (mean ± sd)", "training s per run"], rows,
        "Every net and attack in this report, in question order; the result is the test accuracy, or for an "
        "attack its own measure. Seconds are training time on the machine in the appendix: * marks runs "
        f"that trained while other processes kept more than {BUSY:g} of a core busy (their seconds are "
        "longer than a quiet machine's), ? runs that did not record it.", small=True)])


def per_class_table(runs: Runs) -> Table | None:
    trained = [spec for spec in runs.values() if spec.trained and spec.representative.get("per_class")]
    if not trained:
        return None
    classes = trained[0].representative["per_class"]["classes"]
    return Table(["net"] + classes, [[spec.title] + [percent(v) for v in spec.class_accuracy()] for spec in trained],
                 "Per-class test accuracy of every trained net (the share of each class's test images classified "
                 "correctly, mean over seeds).", small=True)


def confusion_figures(runs: Runs) -> list[Figure]:
    """The homework questions' confusion matrices, drawn small for the appendix."""
    from .. import artifacts
    from ..training import figures

    found = []
    for name, spec in runs.items():
        per_class = spec.representative.get("per_class") or {}
        if not (spec.trained and spec.is_question and per_class.get("confusion_matrix")):
            continue
        figure = figures.confusion_matrix(per_class["confusion_matrix"], per_class["classes"], "", size=(2.0, 1.9))
        path = runs.workdir / f"confusion_{name}.png"
        artifacts.save_figure(path, figure)
        found.append(Figure(path, f"{spec.label}, {spec.title} (seed {spec.representative.get('seed')}): test "
                                  "images by true class (rows) and predicted class (columns).", 0.25))
    return found


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


def _counted(values: list) -> str:
    counts: dict = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return ", ".join(f"{value} ({n} run{'s' if n > 1 else ''})" for value, n in counts.items())


def title_facts(config: ReportConfig) -> list[tuple[str, str]]:
    """The title page: course, assignment, author, collaborators and the date."""
    facts = [(key, value) for key, value in (("course", config.course), ("assignment", config.assignment)) if value]
    facts.append(("author", config.author or "(not set: runner report --author NAME, or author in report.toml)"))
    facts.append(("collaborators", ", ".join(config.collaborators) or "none"))
    facts.append(("date", f"{datetime.date.today():%B %-d, %Y}"))
    return facts


def provenance(runs: Runs, where: Path | None) -> list[list[str]]:
    """Which runs, from where (relative to the report), when, on what machine and code."""
    summaries = [s for spec in runs.values() for s in spec.runs]
    when = sorted(t for spec in runs.values() for t in _when(spec))
    kind = "--quick smoke runs" if runs.quick else "full-protocol runs"
    shown = os.path.relpath(runs.out.resolve(), where.resolve()) if where is not None else str(runs.out)
    facts = [["runs", f"{len(runs)} specs, {len(summaries)} {kind} (the newest completed run of each seed) in "
                      f"{shown} (relative to this report)"]]
    if when:
        facts.append(["when", f"{when[0]:%Y-%m-%d %H:%M} to {when[-1]:%Y-%m-%d %H:%M} (run ids)"])
    facts.append(["machine", _counted([f"{s.get('device', '?')}, {s.get('threads', '?')} thread"
                                       f"{'' if s.get('threads') == 1 else 's'}, torch {s.get('torch', '?')}"
                                       for s in summaries])])
    facts.append(["code version of the runs", _counted([s.get("code_version", "?") for s in summaries])])
    if runs.left_out:
        facts.append(["left out", f"{len(runs.left_out)} run(s) whose spec differs from their spec file's now "
                                  "(made with --set, or before the spec changed): "
                      + ", ".join(note.partition(" (")[0] for note in runs.left_out)])
    return facts


def architecture(spec: SpecRuns, catalogue) -> tuple[list[str], list[list[str]]] | None:
    """The spec's trained model as a layer table (None for evaluate-only specs, or a model that no
    longer builds: a plugin no longer installed, say)."""
    from ..nets.architecture import table
    from ..spec.loading import load
    from ..training.builders import build_model

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


def runs_table(runs: Runs) -> Table:
    """Every run: its net, seed, folder, result, training seconds and how busy the machine was."""
    from ..results import headline

    rows = []
    for spec in runs.values():
        for summary in spec.runs:
            figure = headline(summary)
            other = summary.get("other_work_cores")
            speed = summary.get("images_per_second")
            rows.append([spec.title, str(summary.get("seed")), Path(summary["run_dir"]).name,
                         figure.text() if figure else "–",
                         f"{figure.seconds:.1f}" if figure and figure.seconds is not None else "–",
                         f"{speed:,.0f}" if speed else "–", "–" if other is None else f"{other:.2f}"])
    return Table(["net", "seed", "run", "result", "seconds", "images/s", "other work (cores)"], rows,
                 "Every run in this report. Seconds are training time (an attack's: the attack's); other work is "
                 "the average number of cores other processes kept busy meanwhile (0 on a quiet machine; – where "
                 "the run did not record it).", small=True)


def appendix(runs: Runs, where: Path | None) -> list[Section]:
    sections = [Section("Appendix: the runs", [Table(["", ""], provenance(runs, where),
                                                     "Where the numbers of this report come from.", small=True),
                                               runs_table(runs)])]
    blocks = [t for t in [per_class_table(runs)] if t] + confusion_figures(runs)
    if blocks:
        sections.append(Section("Appendix: per-class results", blocks))
    return sections
