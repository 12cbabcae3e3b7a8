"""The report as a typeset PDF, by Typst (the `typst` package: a Typst compiler inside the wheel,
so it installs from PyPI alone, fonts included).

Every piece of text goes into the Typst source as a string literal, never as markup, so nothing a
run or a template holds (`#`, `*`, `_`, `$`, `<`) can change the document's layout.
"""
from __future__ import annotations

import functools
import shutil
from pathlib import Path

from ..errors import RunnerError
from .document import Bullets, Document, Figure, Heading, Paragraph, Section, Table, inline, layout

PREAMBLE = """
#set document(title: TITLE)
#set page(paper: "a4", margin: (x: 1.8cm, top: 1.8cm, bottom: 2cm), numbering: "1")
#set text(font: "Libertinus Serif", size: 10pt)
#set par(justify: true, leading: 0.55em, spacing: 0.9em)
#set heading(numbering: "1.")
#show heading.where(level: 1): it => block(above: 1.4em, below: 0.5em, sticky: true, text(size: 13pt, it))
#show heading.where(level: 2): it => block(above: 1em, below: 0.5em, sticky: true, text(size: 11pt, it))
#show raw: set text(font: "DejaVu Sans Mono", size: 0.85em)
#show figure.caption: set text(size: 8.5pt)
#show figure.caption: set par(justify: false)
#show figure.where(kind: table): set figure.caption(position: top)
#set table(stroke: none, inset: (x: 4pt, y: 2.2pt))
#show table: set par(justify: false)
"""


def string(text: str) -> str:
    """A Typst string literal holding the text as it is."""
    return '"' + " ".join(text.split()).replace("\\", "\\\\").replace('"', '\\"') + '"'


def content(text: str) -> str:
    """Text with its inline markup as a Typst code expression (a block joining the runs)."""
    runs = []
    for kind, part in inline(text):
        literal = string(part) if kind == "text" else string(part.strip())
        if kind == "text":
            # split() drops the spaces at a run's ends; put back the ones between runs.
            if part[:1].isspace():
                literal = '" " + ' + literal
            if part[-1:].isspace():
                literal += ' + " "'
        runs.append({"text": literal, "strong": f"strong({literal})", "emph": f"emph({literal})",
                     "code": f"raw({literal})", "math": f"eval({literal}, mode: \"math\")"}[kind])
    return "{" + "; ".join(runs or ['""']) + "}"


def table(block: Table) -> str:
    columns = len(block.header)
    header = ", ".join(f"strong({content(cell)})" for cell in block.header)
    rows = ",\n    ".join(", ".join(content(cell) for cell in row + [""] * (columns - len(row))) for row in block.rows)
    body = (f"table(columns: {columns}, align: left,\n    table.hline(stroke: 0.8pt), table.header({header}), "
            f"table.hline(stroke: 0.5pt),\n    {rows},\n    table.hline(stroke: 0.8pt))")
    caption = f"{{strong(\"Table {block.number}.\"); \" \"; {content(block.caption)}}}" if block.caption else "none"
    size = "7pt" if block.small else "8.5pt"
    # A short table stays on one page; a long one (an architecture) continues on the next.
    breakable = "show figure: set block(breakable: true); " if len(block.rows) > 8 else ""
    return (f"#{{ set text(size: {size}); {breakable}figure({body},\n  kind: table, supplement: none, "
            f"numbering: none, caption: {caption}) }}\n")


def figure(block: Figure, images: dict[Path, str], width: str) -> str:
    caption = f"{{strong(\"Figure {block.number}.\"); \" \"; {content(block.caption)}}}"
    return (f"figure(image({string(images[block.path])}, width: {width}), kind: image, supplement: none, "
            f"numbering: none, caption: {caption})")


@functools.singledispatch
def block_source(block, images) -> str:
    """A block as Typst source, by its type (each type registers its form below); `images` maps
    a figure's path to its copy's name below Typst's root."""
    raise TypeError(f"no PDF form for {type(block).__name__}")


@block_source.register
def _(block: list, images) -> str:  # figures side by side, each its share of the line
    rest = round(1 - sum(b.width for b in block), 3)  # an empty column keeps each figure at its width
    columns = ", ".join([f"{b.width}fr" for b in block] + ([f"{rest}fr"] if rest > 0.02 else []))
    cells = ", ".join([figure(b, images, "100%") for b in block] + (["[]"] if rest > 0.02 else []))
    return f"#grid(columns: ({columns},), column-gutter: 10pt, align: top, {cells})\n"


@block_source.register
def _(block: Figure, images) -> str:
    return "#" + figure(block, images, f"{round(block.width * 100)}%") + "\n"


@block_source.register
def _(block: Table, images) -> str:
    return table(block)


@block_source.register
def _(block: Heading, images) -> str:
    return f"#heading(level: 2, numbering: none, {content(block.text)})\n"


@block_source.register
def _(block: Bullets, images) -> str:
    return "#list(" + ", ".join(content(item) for item in block.items) + ")\n"


@block_source.register
def _(block: Paragraph, images) -> str:
    return f"#{content(block.text)}\n"


def section_source(section: Section, images) -> str:
    parts = [f"#heading(level: 1, {content(section.title)})\n"]
    if section.subtitle:
        parts.append(f"#block(sticky: true, text(size: 8.5pt, fill: luma(90), {content(section.subtitle)}))\n")
    parts += [block_source(block, images) for block in layout(section.blocks)]
    return "\n".join(parts)


def title_page(document: Document) -> str:
    facts = ",\n  ".join(f"strong({content(key)}), {content(value)}" for key, value in document.facts)
    warning = (f"#block(fill: rgb(\"#fde8e8\"), inset: 8pt, radius: 3pt, width: 100%, "
               f"text(weight: \"bold\", {content(document.warning)}))\n" if document.warning else "")
    return (f"#align(center, text(size: 20pt, weight: \"bold\", {content(document.title)}))\n"
            f"#v(0.6em)\n{warning}"
            f"#text(size: 9pt, grid(columns: (auto, 1fr), column-gutter: 10pt, row-gutter: 6pt,\n  {facts}))\n"
            "#v(0.8em)\n#text(size: 9pt, outline(depth: 1))\n")


def source(document: Document, images: dict[Path, str]) -> str:
    parts = [PREAMBLE.replace("TITLE", string(document.title)), title_page(document)]
    parts += [section_source(section, images) for section in document.sections]
    parts.append("#pagebreak()\n#set heading(numbering: \"A.\")\n#counter(heading).update(0)\n")
    parts += [section_source(section, images) for section in document.appendix]
    return "\n".join(parts)


def write_pdf(document: Document, path: Path, workdir: Path) -> None:
    """Typesets the document into `path`; its source and a copy of each image stay in `workdir`
    (Typst reads files only below its root)."""
    try:
        import typst
    except ModuleNotFoundError:
        raise RunnerError("the PDF is typeset by the typst package, which is not installed: pip install typst "
                          "(or write the report as HTML: -o report.html)") from None

    images = {}
    folder = workdir / "images"
    folder.mkdir(parents=True, exist_ok=True)
    for i, block in enumerate(document.figures(), 1):
        if block.path not in images:
            copy = folder / f"{i}{block.path.suffix}"
            shutil.copyfile(block.path, copy)
            images[block.path] = str(copy.relative_to(workdir))
    typ = workdir / "report.typ"
    typ.write_text(source(document, images))
    try:
        path.write_bytes(typst.compile(str(typ), root=str(workdir)))
    except typst.TypstError as exc:  # a bug of this module's: the source it wrote does not compile
        raise RunnerError(f"typesetting the PDF failed: {exc}; -o report.html writes the same report as HTML") from exc
