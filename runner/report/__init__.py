"""`runner report`: the runs of an artifacts folder as a typeset PDF, a self-contained HTML page
or Markdown, organized by the specs' questions, and a results table on stdout.

collect: which runs; templates: the answers' prose; build: the document's content (plugins add
theirs through the report_sections hook); pdf, html, markdown: the writers.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from .. import artifacts
from ..errors import RunnerError
from .build import build, say
from .collect import Runs, SpecRuns, collect, gather, latest_per_seed, spec_path, spec_runs
from .compare import compare
from .config import ReportConfig
from .document import Document, Figure, Paragraph, Section, Table
from .markdown import results_table
from .templates import Fields, accuracy_text, explanations, fill_template, template_fields

__all__ = ["ReportConfig", "Document", "Fields", "accuracy_text", "compare", "Figure", "Paragraph", "Runs", "Section",
           "SpecRuns", "Table", "collect", "explanations", "fill_template", "latest_per_seed", "make_runs",
           "results_table", "spec_path", "template_fields", "write_report"]

FORMATS = (".pdf", ".html", ".md")


def make_runs(out: Path, quick: bool, workdir: Path, catalogue) -> Runs:
    """The runs a report of `out` uses (see collect.gather), with each spec's plugin files loaded
    into the catalogue so their report_sections are asked too."""
    runs, left_out, sweeps = gather(out, quick, catalogue)
    found = spec_runs(runs, quick, out)
    for spec in found:
        try:
            catalogue.add_spec_files(spec.run_dir / "spec.toml", spec.spec)
        except RunnerError as exc:
            say(f"{spec.name}: its plugin file is not loaded, so its report sections are missing: {exc}")
    return Runs(found, quick=quick, out=out, workdir=workdir, left_out=left_out, sweeps=sweeps)


def write_report(out: Path, outputs: list[Path], quick: bool = False, config: ReportConfig | None = None,
                 author: str | None = None, collaborators: list[str] | None = None) -> Runs:
    """Writes the report of `out` to each path, in the format its suffix names (.pdf, .html, .md).
    `config` defaults to the report.toml beside the runs' spec files (config.py); `author` and
    `collaborators` override its."""
    from ..plugin_host.catalogue import Catalogue

    out = Path(out)
    catalogue = Catalogue.default()
    with tempfile.TemporaryDirectory(prefix="runner-report-") as folder:
        workdir = Path(folder)
        say(f"collecting runs in {out}")
        runs = make_runs(out, quick, workdir, catalogue)
        if not runs and not runs.sweeps:
            other = "full-protocol" if quick else "--quick"
            all_runs = collect(out)
            hint = (f"; it has {other} runs: runner report {out}{'' if quick else ' --quick'}"
                    if any(latest_per_seed(s, not quick) for s in all_runs.values()) else "")
            raise RunnerError(f"no completed {'--quick' if quick else 'full-protocol'} runs in {out}{hint}")
        swept = sum(len(s) for s in runs.sweeps.values())
        say(f"{sum(len(s.runs) for s in runs.values())} runs of {len(runs)} specs"
            + (f" and {swept} runs made with --set" if swept else "") + "; drawing figures and tables")
        if config is None:
            config = ReportConfig.find(sorted({s.spec_file.parent for s in runs.values() if s.spec_file}))
        if author is not None:
            config.author = author
        if collaborators is not None:
            config.collaborators = collaborators
        document = build(runs, catalogue, config, Path(outputs[0]).resolve().parent)
        for path in outputs:
            write(document, Path(path), workdir)
    return runs


def write(document: Document, path: Path, workdir: Path) -> None:
    if path.suffix == ".pdf":
        from .pdf import write_pdf

        say(f"typesetting PDF {path}")
        with artifacts.atomic_path(path) as tmp:
            write_pdf(document, Path(tmp), workdir / "typst")
    elif path.suffix == ".html":
        from .html import render as render_html

        say(f"writing HTML {path}")
        artifacts.write_text(path, render_html(document))
    else:
        from .markdown import render as render_markdown

        say(f"writing Markdown {path}")
        artifacts.write_text(path, render_markdown(document, path.resolve().parent, workdir))


def cmd_report(argv) -> int:
    parser = argparse.ArgumentParser(prog="runner report",
                                     description="A report of the runs in ARTIFACTS: PDF, HTML or Markdown.")
    parser.add_argument("artifacts", nargs="?", default="artifacts")
    parser.add_argument("-o", "--output", action="append", default=None,
                        help="where to write it: .pdf (typeset), .html (one self-contained file) or .md; "
                             "may be given more than once (default: ARTIFACTS/report.pdf)")
    parser.add_argument("--quick", action="store_true", help="report the --quick runs instead of full ones")
    parser.add_argument("--author", help="the author's name on the title page (default: report.toml's)")
    parser.add_argument("--collaborators", help="collaborators, comma-separated (default: report.toml's)")
    parser.add_argument("--config", type=Path, help="a report.toml (default: the one beside the runs' spec files)")
    args = parser.parse_args(argv)
    out = Path(args.artifacts)
    if not out.is_dir():
        raise RunnerError(f"no artifacts folder {out}: runs write there (runner SPEC --out {out})")
    outputs = [Path(p) for p in args.output] if args.output else \
        [out / ("report-quick.pdf" if args.quick else "report.pdf")]
    for path in outputs:
        if path.suffix not in FORMATS:
            raise RunnerError(f"cannot write a report as {path.name!r}: name it .pdf, .html or .md "
                              f"(runner report {out} -o report.pdf)")
    if args.config and not args.config.is_file():
        raise RunnerError(f"no report config {args.config}: write one with a [report] table "
                          "(see runner/report/config.py)")
    config = ReportConfig.load(args.config) if args.config else None
    collaborators = (None if args.collaborators is None
                     else [c.strip() for c in args.collaborators.split(",") if c.strip()])
    runs = write_report(out, outputs, args.quick, config, args.author, collaborators)
    print(results_table(runs))
    print("wrote " + ", ".join(map(str, outputs)))
    return 0
