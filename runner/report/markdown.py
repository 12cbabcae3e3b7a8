"""The report in Markdown: the results table `runner report` prints (for the terminal and the
README), and the whole document for `-o report.md` (images linked where the runs keep them)."""
from __future__ import annotations

import functools
import os
from pathlib import Path

from ..results import DASH, number_text
from .collect import Runs
from .document import Bullets, Document, Figure, Heading, Paragraph, Section, Table
from .templates import own_result_text


def cell(value: str) -> str:
    return value.replace("|", "\\|")


def table_lines(header: list[str], rows: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(map(cell, row)) + " |" for row in rows])


def results_table(runs: Runs) -> str:
    """Every spec's seeds, test accuracy (mean ± sd and per seed), seconds and images/s per run;
    an evaluate-only spec (an attack) has no accuracy of its own: its row says so, with its own
    result where its plugin records one (an attack's fooled share)."""
    rows = []
    for name, spec in runs.items():
        if not spec.trained:
            own = own_result_text(spec)
            rows.append([name, str(len(spec.runs)), f"{DASH} ({own})" if own else
                         f"{DASH} (evaluates another spec's model)", DASH, DASH, DASH])
            continue
        mean, sd = spec.mean_sd()
        rows.append([name, str(len(spec.runs)), f"{mean:.1%}" + (f" ± {sd:.1%}" if sd is not None else ""),
                     ", ".join(f"{v:.1%}" for v in spec.values("test_accuracy")),
                     number_text(spec.mean_sd("seconds")[0], ".0f"),
                     number_text(spec.mean_sd("images_per_second")[0], ".0f")])
    header = ["spec", "seeds", "test accuracy (mean ± sd)", "per seed", "seconds per run", "images/s"]
    return "\n".join(table_lines(header, rows)) + "\n"


def image_link(path: Path, folder: Path, workdir: Path, kept: str = "report-figures") -> str:
    """A run's figure by its path from the Markdown file; one drawn for the report (in `workdir`,
    gone once the report is written) is copied into a folder beside the Markdown file."""
    import shutil

    if path.is_relative_to(workdir):
        copy = folder / kept / path.name
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, copy)
        path = copy
    return os.path.relpath(path.resolve(), folder.resolve())


@functools.singledispatch
def block_lines(block, folder: Path, workdir: Path) -> list[str]:
    """A block as Markdown lines, by its type (each type registers its form below); `folder` is
    the Markdown file's, `workdir` where figures drawn for the report lie."""
    raise TypeError(f"no Markdown form for {type(block).__name__}")


@block_lines.register
def _(block: Figure, folder: Path, workdir: Path) -> list[str]:
    return [f"![Figure {block.number}]({image_link(block.path, folder, workdir)})", "",
            f"*Figure {block.number}.* {block.caption}"]


@block_lines.register
def _(block: Table, folder: Path, workdir: Path) -> list[str]:
    return ([f"*Table {block.number}.* {block.caption}", ""] if block.caption else []) + \
        table_lines(block.header, block.rows)


@block_lines.register
def _(block: Heading, folder: Path, workdir: Path) -> list[str]:
    return [f"### {block.text}"]


@block_lines.register
def _(block: Bullets, folder: Path, workdir: Path) -> list[str]:
    return [f"- {item}" for item in block.items]


@block_lines.register
def _(block: Paragraph, folder: Path, workdir: Path) -> list[str]:
    return [block.text]


def section_lines(section: Section, folder: Path, workdir: Path) -> list[str]:
    lines = [f"## {section.title}", ""] + ([f"*{section.subtitle}*", ""] if section.subtitle else [])
    for block in section.blocks:
        lines += block_lines(block, folder, workdir) + [""]
    return lines


def render(document: Document, folder: Path, workdir: Path) -> str:
    lines = [f"# {document.title}", ""] + ([f"**{document.warning}**", ""] if document.warning else [])
    lines += [f"- {key}: {value}" for key, value in document.facts] + [""]
    for section in document.sections + document.appendix:
        lines += section_lines(section, folder, workdir)
    return "\n".join(lines)
