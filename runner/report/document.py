"""The report as a document: sections of blocks (paragraphs, lists, tables, figures) that the PDF,
HTML and Markdown writers each draw in their own syntax.

Text in blocks may carry a little inline markup, as the explanation templates do: **bold**,
*emphasis*, `code` and $math$ (Typst's math syntax). Writers turn it into their own (no asterisk reaches the PDF).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

INLINE = re.compile(r"\*\*(.+?)\*\*|`([^`]+)`|(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])|\$([^$]+)\$", re.S)


def inline(text: str) -> list[tuple[str, str]]:
    """Text as (kind, text) runs, kind one of "text", "strong", "emph", "code", "math" ($...$, in
    Typst's math syntax: the PDF typesets it, HTML and Markdown show it as written)."""
    parts, at = [], 0
    for match in INLINE.finditer(text):
        if match.start() > at:
            parts.append(("text", text[at:match.start()]))
        strong, code, emph, math = match.groups()
        parts.append(("strong", strong) if strong is not None else ("code", code) if code is not None
                     else ("emph", emph) if emph is not None else ("math", math))
        at = match.end()
    if at < len(text):
        parts.append(("text", text[at:]))
    return parts


def plain(text: str) -> str:
    """The text without its inline markup."""
    return "".join(part for _, part in inline(text))


@dataclass
class Paragraph:
    text: str


@dataclass
class Heading:
    """A heading inside a section."""

    text: str


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""
    small: bool = False  # many columns or rows: a smaller font
    number: int = 0  # set by the document, in reading order


@dataclass
class Figure:
    path: Path
    caption: str
    width: float = 1.0  # of the text width; figures of half or less sit side by side
    number: int = 0


@dataclass
class Section:
    """A section of the report. A plugin's Section with `spec` set adds its blocks and template
    fields to that spec's section; one without `spec` is a section of its own, placed among the
    studies beyond the homework's questions."""

    title: str = ""
    blocks: list = field(default_factory=list)
    spec: str | None = None
    fields: dict = field(default_factory=dict)  # for the spec's explanation template: {spec.key}
    subtitle: str = ""


@dataclass
class Document:
    title: str
    facts: list[tuple[str, str]]  # the title page's "what was run, when, where, which code"
    warning: str = ""  # said first, on the title page (quick runs are no results)
    sections: list[Section] = field(default_factory=list)
    appendix: list[Section] = field(default_factory=list)

    def number(self) -> "Document":
        """Numbers figures and tables in reading order."""
        counts = {Figure: 0, Table: 0}
        for section in self.sections + self.appendix:
            for block in section.blocks:
                if type(block) in counts:
                    counts[type(block)] += 1
                    block.number = counts[type(block)]
        return self

    def figures(self) -> list[Figure]:
        return [b for s in self.sections + self.appendix for b in s.blocks if isinstance(b, Figure)]


Block = Paragraph | Heading | Bullets | Table | Figure


def blocks_from_text(text: str) -> list:
    """Template text (paragraphs split by blank lines, "- " list items, "### " headings) as blocks."""
    blocks: list[Block] = []
    for chunk in re.split(r"\n\s*\n", text.strip()):
        lines = [line.rstrip() for line in chunk.strip().splitlines()]
        if not lines:
            continue
        if lines[0].startswith("#"):
            blocks.append(Heading(lines[0].lstrip("#").strip()))
            lines = lines[1:]
            if not lines:
                continue
        if lines[0].startswith("- "):
            items: list[str] = []
            for line in lines:
                if line.startswith("- "):
                    items.append(line[2:].strip())
                elif items:
                    items[-1] += " " + line.strip()
            blocks.append(Bullets(items))
        else:
            blocks.append(Paragraph(" ".join(line.strip() for line in lines)))
    return blocks


def layout(blocks: list) -> list:
    """Blocks with consecutive figures packed into rows (lists) while their widths fit the line."""
    out: list[Block | list[Figure]] = []
    for block in blocks:
        row = out[-1] if out and isinstance(out[-1], list) else None
        if isinstance(block, Figure) and row is not None and sum(f.width for f in row) + block.width <= 1.0:
            row.append(block)
        elif isinstance(block, Figure) and block.width <= 0.5:
            out.append([block])
        else:
            out.append(block)
    return [b[0] if isinstance(b, list) and len(b) == 1 else b for b in out]
