"""`runner report`: a results table (Markdown) and a PDF with each spec's figures (from one run, see
representative), from artifacts.

Numbers come from the runs' summary.json files, never typed by hand. Only completed runs count, and
of full-protocol runs only those made as their spec file says now (no --set); a report that
includes --quick runs says so on its first page.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import string
import sys
import textwrap
import tomllib
from pathlib import Path

from . import artifacts, figures
from .errors import RunnerError
from .plugins import Catalogue
from matplotlib.backends.backend_pdf import PdfPages

plt = figures.plt


def collect(out: Path) -> dict[str, list[dict]]:
    """spec name -> summaries of its completed runs (each with its folder), oldest first."""
    runs: dict[str, list[dict]] = {}
    for spec_dir in sorted(p for p in Path(out).iterdir() if p.is_dir()):
        for run_dir in artifacts.completed_runs(out, spec_dir.name):
            try:
                summary = json.loads((run_dir / "summary.json").read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                continue
            runs.setdefault(spec_dir.name, []).append(dict(summary, run_dir=str(run_dir)))
    return runs


# This project's own specs: the last place a run's spec file is looked for.
PROJECT_SPECS = Path(__file__).resolve().parents[1] / "specs"


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
    from .spec import differences, load

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


def protocol_runs(runs: dict[str, list[dict]], out: Path) -> tuple[dict[str, list[dict]], list[str]]:
    """The runs whose spec is their spec file's (see spec_changes), and a note on each one left out.
    Quick runs stay: --quick's own overrides make every one differ, and their report says they are
    not results. Filtering before latest_per_seed lets an older matching run stand for its seed."""
    catalogue = Catalogue.default()
    kept, notes = {}, []
    for name, summaries in runs.items():
        for summary in summaries:
            changes = [] if summary.get("quick") else spec_changes(summary, out, catalogue)
            if changes:
                notes.append(f"{name}/{Path(summary['run_dir']).name} ({'; '.join(changes)})")
            else:
                kept.setdefault(name, []).append(summary)
    return kept, notes


def latest_per_seed(summaries: list[dict], quick: bool) -> list[dict]:
    """One run per seed (the newest), of the wanted kind (quick or full protocol)."""
    by_seed = {}
    for summary in summaries:
        if bool(summary.get("quick")) == quick:
            by_seed[summary.get("seed")] = summary
    return [by_seed[seed] for seed in sorted(by_seed, key=lambda s: (s is None, s))]


def representative(chosen: list[dict]) -> dict:
    """The one run a spec's single numbers, figures and text come from: its lowest seed. One rule
    for the tables, the templates and the run sections, so a report never quotes two seeds' values
    for the same quantity."""
    return chosen[0]


def accuracy_stats(chosen: list[dict]) -> tuple[list[float], float, float | None]:
    """Test accuracies of the chosen runs, their mean, and their sd (None for a single run)."""
    accuracies = [s["test_accuracy"] for s in chosen]
    return accuracies, statistics.mean(accuracies), statistics.stdev(accuracies) if len(accuracies) > 1 else None


def results_table(runs: dict[str, list[dict]], quick: bool = False) -> str:
    lines = ["| spec | seeds | test accuracy (mean ± sd) | per seed | seconds per run | images/s |",
             "|---|---|---|---|---|---|"]
    for name, summaries in runs.items():
        chosen = latest_per_seed(summaries, quick)
        if not chosen:
            continue
        seconds = [s["seconds"] for s in chosen if s.get("iterations")]
        speed = [s["images_per_second"] for s in chosen if s.get("images_per_second")]
        lines.append(f"| {name} | {len(chosen)} | {_mean_sd(chosen)} | "
                     + ", ".join(f"{s['test_accuracy']:.1%}" for s in chosen) + " | "
                     + (f"{statistics.mean(seconds):.0f}" if seconds else "–") + " | "
                     + (f"{statistics.mean(speed):.0f}" if speed else "–") + " |")
    return "\n".join(lines) + "\n"


LINES_PER_PAGE = 84


def _blocks(markdown: str) -> list[str]:
    """Table rows and empty lines as they are; the lines of a paragraph or list item joined."""
    blocks: list[str] = []
    for line in markdown.splitlines():
        starts_block = not line.strip() or line.startswith(("|", "#", "- ")) or not blocks
        if starts_block or not blocks[-1].strip() or blocks[-1].startswith(("|", "#")):
            blocks.append(line)
        else:
            blocks[-1] += " " + line.strip()
    return blocks


def _text_page(pdf, title: str, body: str) -> None:
    """Monospaced text on A4 pages, continued on further pages when long."""
    wrapped = [piece for block in _blocks(body)
               for piece in ([block] if block.startswith("|") else textwrap.wrap(block, 95) or [""])]
    for start in range(0, max(1, len(wrapped)), LINES_PER_PAGE):
        figure = plt.figure(figsize=(8.27, 11.69))
        figure.text(0.07, 0.95, title + (" (continued)" if start else ""), fontsize=15, weight="bold", va="top")
        figure.text(0.07, 0.91, "\n".join(wrapped[start:start + LINES_PER_PAGE]), fontsize=7.5, va="top",
                    family="monospace")
        pdf.savefig(figure)
        plt.close(figure)


def _figure_page(pdf, title: str, lines: list[str], images: list[Path]) -> None:
    figure = plt.figure(figsize=(8.27, 11.69))
    figure.text(0.07, 0.96, title, fontsize=13, weight="bold", va="top")
    figure.text(0.07, 0.935, "\n".join(textwrap.fill(line, 100) for line in lines), fontsize=8, va="top")
    slots = max(1, len(images))
    top, bottom = 0.84, 0.03
    height = (top - bottom) / slots
    for i, image in enumerate(images):
        axes = figure.add_axes([0.05, top - (i + 1) * height + 0.01, 0.9, height - 0.02])
        axes.imshow(plt.imread(image))
        axes.set_axis_off()
        axes.set_title(image.name, fontsize=7)
    pdf.savefig(figure)
    plt.close(figure)


class Fields(dict):
    """A summary for str.format templates: {spec.key.sub} and {spec.key[1]} both work."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, key):
        value = super().__getitem__(str(key) if str(key) in self else key)
        return Fields(value) if isinstance(value, dict) else value


def template_fields(runs: dict[str, list[dict]], quick: bool) -> Fields:
    """What explanation templates may use: each spec's representative run summary (its lowest seed,
    plus `accuracy_mean`, `accuracy_sd` and `seeds` over its runs), Part 1's comparisons (see
    part1_fields), `fgsm`/`transfer` (P3's blocks) and the generated tables (None without data)."""
    fields = {}
    for name, summaries in runs.items():
        chosen = latest_per_seed(summaries, quick)
        if chosen:
            _, mean, sd = accuracy_stats(chosen)
            fields[name] = dict(representative(chosen), accuracy_mean=mean, seeds=len(chosen), accuracy_sd=sd or 0.0)
    part1_fields(runs, quick, fields)
    for spec, block in (("p3_q1_fgsm", "fgsm"), ("p3_q2_transfer", "transfer")):
        if block in fields.get(spec, {}):
            fields[block] = fields[spec][block]
    switches = fields.get("fgsm", {}).get("top_switches")
    # Text, not a table: "cat to dog (14.2%), ..."; None (section left out) for runs made before it was recorded.
    fields["fgsm_switches"] = ", ".join(f"{s['from']} to {s['to']} ({s['share']:.1%})" for s in switches) \
        if switches else None
    fields["part1_table"] = part1_table(runs, quick)
    fields["part2_table"] = part2_table(runs, quick)
    # None, not a placeholder, without data: the template section built on the table is left out.
    matrix = fields.get("transfer", {}).get("matrix")
    fields["transfer_matrix_table"] = transfer_matrix_table(matrix) if matrix and matrix.get("sources") else None
    universal = fields.get("p3_universal", {}).get("universal")
    fields["universal_table"] = universal_table(universal) if universal else None
    return Fields(fields)


def _compare(change: float, noise: float, words: tuple[str, str]) -> str:
    """A difference in words; within the noise it is "about the same as"."""
    return "about the same as" if abs(change) <= noise else words[change < 0]


def part1_fields(runs, quick, fields: dict) -> None:
    """Adds to each Part 1 spec's fields `train_accuracy_mean` (final running training accuracy, mean
    over seeds, as part1_table), `gap` (that minus the mean test accuracy: the overfitting) and, from
    Q2 on, `vs_previous`: the changes from the previous question and their words ("higher than",
    "lower than", "about the same as"; for the gap "wider than", "narrower than"). A change within
    1 point, or within 2 standard errors of the difference of the means, is about the same."""
    previous = None
    for name in PART1:
        chosen = latest_per_seed(runs.get(name, []), quick)
        if not chosen:
            previous = None  # compare with the question before only
            continue
        train = [s.get("final_running_train_accuracy") for s in chosen]
        this = fields[name]
        this["train_accuracy_mean"] = train = statistics.mean(train) if None not in train else None
        this["gap"] = None if train is None else train - this["accuracy_mean"]
        if previous is not None:
            noise = max(0.01, 2 * math.sqrt(this["accuracy_sd"] ** 2 / this["seeds"]
                                            + previous["accuracy_sd"] ** 2 / previous["seeds"]))
            compared = {"test_change": this["accuracy_mean"] - previous["accuracy_mean"]}
            compared["test_word"] = _compare(compared["test_change"], noise, ("higher than", "lower than"))
            if this["gap"] is not None and previous["gap"] is not None:
                compared["train_change"] = this["train_accuracy_mean"] - previous["train_accuracy_mean"]
                compared["train_word"] = _compare(compared["train_change"], noise, ("higher than", "lower than"))
                compared["gap_change"] = this["gap"] - previous["gap"]
                compared["gap_word"] = _compare(compared["gap_change"], noise, ("wider than", "narrower than"))
            this["vs_previous"] = compared
        previous = this


def _missing(text: str, fields: Fields) -> list[str]:
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


def fill_template(path: Path, fields: Fields) -> str | None:
    """The template with its fields filled, section by section (a section runs from a heading line
    to the next), so one question's missing run leaves out that question's text only; None when no
    section with text is left. What is left out, and for which fields, goes to stderr."""
    template = re.sub(r"<!--.*?-->", "", path.read_text(), flags=re.S)  # comments may hold braces
    filled, texts = [], 0
    for section in filter(str.strip, re.split(r"(?m)^(?=#)", template.strip())):
        heading, _, body = section.partition("\n") if section.startswith("#") else ("", "", section)
        missing = _missing(section, fields)
        if missing:
            names = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
            print(f"report: {path.name}: left out {heading.strip() or 'the text'!r}: no value for {names}",
                  file=sys.stderr)
            continue
        filled.append(section.format_map(fields).strip())
        texts += bool(body.strip())
    return "\n\n".join(filled) if texts else None


def explanations(runs: dict[str, list[dict]], fields: Fields, out: Path) -> list[tuple[str, str, str]]:
    """(file name, title, filled text) of every *_explanation.md beside the runs' spec files that has
    a section with all its fields."""
    folders = {path.parent for summaries in runs.values() for s in summaries if (path := spec_path(s, out))}
    found = []
    for folder in sorted(folders):
        for path in sorted(folder.glob("*_explanation.md")):
            text = fill_template(path, fields)
            if text:
                title, _, body = text.partition("\n")
                found.append((path.name, title.lstrip("# "), body.strip()))
    return found


def _pct(value) -> str:
    return "–" if value is None else f"{value:.1%}"


def _sci(value) -> str:
    """A G value or ratio; grad_magnitude writes null for NaN/inf or a zero denominator."""
    return "–" if value is None else f"{value:.1e}"


def _mean_sd(chosen: list[dict]) -> str:
    """Mean test accuracy of the runs, ± their sd when there are several."""
    _, mean, sd = accuracy_stats(chosen)
    return f"{mean:.1%}" + (f" ± {sd:.1%}" if sd is not None else "")


def _accuracy_cell(chosen: list[dict]) -> str:
    return f"{_mean_sd(chosen)} ({len(chosen)})"


PART1 = ("p1_q1_raw", "p1_q2_normalize", "p1_q3_flip", "p1_q4_crop")


def part1_table(runs, quick) -> str:
    lines = ["| spec | transforms | test accuracy, mean ± sd (seeds) | final running train accuracy |", "|---|---|---|---|"]
    for name in PART1:
        chosen = latest_per_seed(runs.get(name, []), quick)
        if chosen:
            transforms = _spec_table(representative(chosen)).get("data", {}).get("transforms", [])
            train = statistics.mean(s.get("final_running_train_accuracy") or 0 for s in chosen)
            lines.append(f"| {name} | {', '.join(transforms) or 'none'} | {_accuracy_cell(chosen)} | {train:.1%} |")
    return "\n".join(lines)


def part2_table(runs, quick) -> str:
    """Every spec with gradient magnitudes: accuracy over seeds, and G of the first/last conv at 1, 100
    and the end from its representative run ("–" where that run recorded no finite value)."""
    lines = ["| spec | test accuracy (seeds) | G first @1 | G last @1 | ratio @1 | ratio @100 | ratio @end |",
             "|---|---|---|---|---|---|---|"]
    for name, summaries in runs.items():
        chosen = latest_per_seed(summaries, quick)
        if not chosen or "grad_magnitude" not in representative(chosen):
            continue  # no gradients logged for this spec
        g = representative(chosen)["grad_magnitude"] or {}  # the plugin writes null when nothing was recorded
        cells = [(g.get(block) or {}).get(key) for block, key in (
            ("first_G", "1"), ("last_G", "1"), ("ratio_first_over_last", "1"),
            ("ratio_first_over_last", "100"), ("ratio_first_over_last", "last_iteration"))]
        lines.append(f"| {name} | {_accuracy_cell(chosen)} | " + " | ".join(map(_sci, cells)) + " |")
    return "\n".join(lines)


def transfer_matrix_table(matrix) -> str:
    if not matrix or not matrix.get("sources"):
        return "(no transfer matrix)"
    lines = ["| adversarial images made on | " + " | ".join(matrix["targets"]) + " |",
             "|---|" + "---|" * len(matrix["targets"])]
    for model, n, row in zip(matrix["source_models"], matrix["n"], matrix["accuracy"]):
        lines.append(f"| {model} (n={n}) | " + " | ".join(_pct(v) for v in row) + " |")
    return "\n".join(lines)


def universal_table(universal) -> str:
    if not universal:
        return "(no universal perturbation run)"
    lines = ["| evaluated model | fooling rate of v | of random signs, same L-inf | accuracy clean -> with v |",
             "|---|---|---|---|"]
    for name, cell in universal["test"].items():
        lines.append(f"| {name} | {_pct(cell['fooling_rate'])} | {_pct(cell['random_noise_fooling_rate'])} | "
                     f"{_pct(cell['clean_accuracy'])} -> {_pct(cell['perturbed_accuracy'])} |")
    return "\n".join(lines)


def _spec_table(summary: dict) -> dict:
    import tomllib

    path = Path(summary["run_dir"]) / "spec.toml"
    return tomllib.loads(path.read_text()) if path.is_file() else {}


def key_settings(summary: dict) -> str:
    table = _spec_table(summary)
    model, train, data = table.get("model", {}), table.get("train", {}), table.get("data", {})
    plugins = [name for name, settings in table.get("plugins", {}).items() if settings.get("enabled", True)]
    return (f"model {model.get('name')}; transforms {', '.join(data.get('transforms', [])) or 'none'}; "
            f"plugins {', '.join(plugins) or 'none'}; {train.get('iterations')} iterations at batch "
            f"{train.get('batch_size')}, {train.get('optimizer')} lr {train.get('lr')}")


def architecture_table(summary: dict, catalogue) -> str | None:
    """The run's model as a table (None for evaluate-only specs, whose model is another run's)."""
    from .architecture import markdown
    from .run import build_model
    from .spec import load

    if not summary.get("iterations"):
        return None
    try:
        return markdown(build_model(load(Path(summary["run_dir"]) / "spec.toml", catalogue), catalogue))
    except Exception:  # a plugin no longer installed, say: the report goes on without the table
        return None


def part1_figure(runs, quick):
    """Running training accuracy of Part 1's four runs on one plot (mean over seeds), test accuracy as markers."""
    import csv

    present = [name for name in PART1 if latest_per_seed(runs.get(name, []), quick)]
    if not present:
        return None
    figure, axes = plt.subplots(figsize=(7.5, 4.2))
    for name in present:
        chosen = latest_per_seed(runs[name], quick)
        curves = []
        for summary in chosen:
            with open(Path(summary["run_dir"]) / "metrics.csv") as handle:
                curves.append([(int(r["iteration"]), float(r["running_accuracy"])) for r in csv.DictReader(handle)])
        length = min(len(c) for c in curves)
        x = [it for it, _ in curves[0][:length]]
        y = [statistics.mean(c[i][1] for c in curves) for i in range(length)]
        _, test, _ = accuracy_stats(chosen)
        line, = axes.plot(x, y, lw=1.5, label=f"{name}: test {test:.1%} ({len(chosen)} seeds)")
        axes.plot([x[-1]], [test], marker="o", color=line.get_color())
    axes.set(xlabel="iteration", ylabel="running training accuracy (last epoch); dot: test",
             title="Part 1: preprocessing compared (mean over seeds)", ylim=(0, 1))
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    return figure


def section_order(name: str) -> tuple:
    """Homework order: by part, the questions (p2_q1...) before the extra specs (p2_fix_...)."""
    part, _, rest = name.partition("_")
    return part, not rest.startswith("q"), name


def gather(out: Path, quick: bool) -> tuple[dict[str, list[dict]], list[str]]:
    """The runs a report uses and notes on the full-protocol runs left out (see protocol_runs)."""
    runs, left_out = collect(out), []
    if not quick:
        runs, left_out = protocol_runs(runs, out)
    for note in left_out:
        print(f"report: left out {note}: its spec is not its spec file's now", file=sys.stderr)
    return runs, left_out


def write_report(out: Path, pdf_path: Path, quick: bool = False, gathered=None) -> Path:
    """gathered: gather()'s answer, when the caller has it already."""
    runs, left_out = gathered or gather(out, quick)
    table = results_table(runs, quick)
    fields = template_fields(runs, quick)
    texts = explanations(runs, fields, out)
    # Part 1's text answers the questions about the Part 1 table: it goes right below it.
    part1 = [text for name, _, text in texts if name == "p1_explanation.md"]
    heading = ("**Made from --quick smoke runs: the numbers are not results.**" if quick else
               "Full-protocol runs (train batch 1, 2,000 iterations at batch 100, test batch).")
    if left_out:
        heading += (f" Left out: {len(left_out)} run(s) whose spec differs from their spec file's now "
                    "(made with --set, or before the spec changed): "
                    + ", ".join(note.partition(" (")[0] for note in left_out) + ".")
    markdown = ["# runner report", "", heading, "", table,
                "## Part 1 compared", "", fields["part1_table"], "", *[t for text in part1 for t in (text, "")],
                "## Part 2: plain deep net against every fix", "", fields["part2_table"], "",
                "## Part 3: transfer matrix (accuracy on adversarial images)", "",
                fields["transfer_matrix_table"] or transfer_matrix_table(None), "",
                "## Universal perturbation (test set)", "", fields["universal_table"] or universal_table(None), ""]
    catalogue = Catalogue.default()  # one, for every architecture table
    with artifacts.atomic_path(pdf_path) as tmp, PdfPages(tmp) as pdf:
        _text_page(pdf, "runner report" + (" (QUICK RUNS: not results)" if quick else ""), "\n".join(markdown[2:]))
        figure = part1_figure(runs, quick)
        if figure is not None:
            figure_path = pdf_path.with_name(pdf_path.stem + "-part1.png")
            artifacts.save_figure(figure_path, figure)
            pdf.savefig(figure)
            plt.close(figure)
            markdown += [f"![Part 1 compared]({figure_path.name})", ""]
        for name in sorted(runs, key=section_order):
            chosen = latest_per_seed(runs[name], quick)
            if not chosen:
                continue
            shown = representative(chosen)  # its figures match the tables' numbers
            run_dir = Path(shown["run_dir"])
            question = _spec_table(shown).get("question", "")
            accuracies, mean, _ = accuracy_stats(chosen)
            lines = [question, f"spec: {shown.get('spec_file', name)}", key_settings(shown),
                     f"test accuracy: {mean:.2%} over {len(accuracies)} seed(s) "
                     + ", ".join(f"{a:.2%}" for a in accuracies),
                     f"run: {run_dir} ({shown.get('device')}, {shown.get('seconds')} s training)"]
            markdown += [f"## {name}", "", *[f"- {line}" for line in lines if line], ""]
            architecture = architecture_table(shown, catalogue)
            if architecture:
                _text_page(pdf, f"{name}: architecture", "\n".join(lines) + "\n\n" + architecture)
                markdown += [architecture, ""]
            pngs = sorted(run_dir.glob("*.png"))
            for start in range(0, max(1, len(pngs)), 3):
                _figure_page(pdf, name, lines, pngs[start:start + 3])
        for file, title, text in texts:
            if file != "p1_explanation.md":
                _text_page(pdf, title, text)
                markdown += ["", f"## {title}", "", text]
    markdown_path = pdf_path.with_suffix(".md")
    artifacts.write_text(markdown_path, "\n".join(markdown))
    return pdf_path


def cmd_report(argv) -> int:
    parser = argparse.ArgumentParser(prog="runner report", description="Results table and PDF from run artifacts.")
    parser.add_argument("artifacts", nargs="?", default="artifacts")
    parser.add_argument("-o", "--output", default=None, help="PDF path (default: ARTIFACTS/report.pdf)")
    parser.add_argument("--quick", action="store_true", help="report the --quick runs instead of full ones")
    args = parser.parse_args(argv)
    out = Path(args.artifacts)
    if not out.is_dir():
        raise RunnerError(f"no artifacts folder {out}: runs write there (runner SPEC --out {out})")
    pdf = Path(args.output) if args.output else out / ("report-quick.pdf" if args.quick else "report.pdf")
    gathered = gather(out, args.quick)
    if not any(latest_per_seed(summaries, args.quick) for summaries in gathered[0].values()):
        other = "full-protocol" if args.quick else "--quick"
        hint = (f"; it has {other} runs: runner report {out}{'' if args.quick else ' --quick'}"
                if any(latest_per_seed(s, not args.quick) for s in gathered[0].values()) else "")
        raise RunnerError(f"no completed {'--quick' if args.quick else 'full-protocol'} runs in {out}{hint}")
    write_report(out, pdf, args.quick, gathered)
    print(results_table(gathered[0], args.quick))
    print(f"wrote {pdf} and {pdf.with_suffix('.md')}")
    return 0
