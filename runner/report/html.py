"""The report as one self-contained HTML file: styles inline, images embedded as data URIs."""
from __future__ import annotations

import base64
import functools
import html
import mimetypes
import re
from pathlib import Path

from .document import Bullets, Document, Figure, Heading, Paragraph, Section, Table, inline, layout

STYLE = """
body { font: 15px/1.5 Georgia, 'Times New Roman', serif; max-width: 54em; margin: 2em auto; padding: 0 1em;
       color: #1a1a1a; }
h1 { font-size: 1.9em; text-align: center; } h2 { font-size: 1.35em; margin-top: 2em; border-bottom: 1px solid #ccc; }
h3 { font-size: 1.1em; } .subtitle { color: #555; font-size: 0.85em; margin-top: -0.6em; }
.warning { background: #fde8e8; padding: 0.6em 0.8em; border-radius: 4px; font-weight: bold; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 0.3em 1em; font-size: 0.9em; }
dl.facts dt { font-weight: bold; } dl.facts dd { margin: 0; }
table { border-collapse: collapse; margin: 0.5em 0 1.2em; font-size: 0.85em; }
table.small { font-size: 0.72em; } th, td { padding: 0.15em 0.5em; text-align: left; vertical-align: top; }
thead tr { border-top: 2px solid #333; border-bottom: 1px solid #333; }
tbody tr:last-child { border-bottom: 2px solid #333; }
caption { caption-side: top; text-align: left; font-size: 0.9em; padding-bottom: 0.3em; }
figure { margin: 1em auto; text-align: center; } figure img { max-width: 100%; }
figcaption { font-size: 0.85em; text-align: left; }
.pair { display: flex; gap: 1em; } .pair figure { flex: 1; margin: 1em 0; }
code { font-size: 0.9em; background: #f3f3f3; padding: 0 0.2em; } nav ol { font-size: 0.9em; }
"""


def math(value: str) -> str:
    """Typst math as HTML: italic, a_b and a^b as sub- and superscripts, quoted words upright."""
    escaped = html.escape(value.replace('"', "").replace("\\", ""))
    escaped = re.sub(r"_\(([^)]*)\)|_(\w)", lambda m: f"<sub>{m[1] or m[2]}</sub>", escaped)
    escaped = re.sub(r"\^\(([^)]*)\)|\^(-?\w+)", lambda m: f"<sup>{m[1] or m[2]}</sup>", escaped)
    return f"<i>{escaped}</i>"


def text(value: str) -> str:
    tags = {"strong": "strong", "emph": "em", "code": "code"}
    return "".join(html.escape(part) if kind == "text" else math(part) if kind == "math"
                   else f"<{tags[kind]}>{html.escape(part)}</{tags[kind]}>" for kind, part in inline(value))


def data_uri(path: Path) -> str:
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode()}"


def figure(block: Figure, width: str) -> str:
    return (f'<figure style="width:{width}"><img src="{data_uri(block.path)}" alt="{html.escape(block.caption)}">'
            f"<figcaption><strong>Figure {block.number}.</strong> {text(block.caption)}</figcaption></figure>")


def table(block: Table) -> str:
    caption = (f"<caption><strong>Table {block.number}.</strong> {text(block.caption)}</caption>" if block.caption
               else "")
    head = "".join(f"<th>{text(cell)}</th>" for cell in block.header)
    rows = "".join("<tr>" + "".join(f"<td>{text(cell)}</td>" for cell in row) + "</tr>" for row in block.rows)
    return (f'<table class="{"small" if block.small else ""}">{caption}<thead><tr>{head}</tr></thead>'
            f"<tbody>{rows}</tbody></table>")


@functools.singledispatch
def block_html(block) -> str:
    """A block as HTML, by its type (each type registers its form below)."""
    raise TypeError(f"no HTML form for {type(block).__name__}")


@block_html.register
def _(block: list) -> str:  # figures side by side (document.layout)
    return '<div class="pair">' + "".join(figure(b, "auto") for b in block) + "</div>"


@block_html.register
def _(block: Figure) -> str:
    return figure(block, f"{round(block.width * 100)}%")


block_html.register(Table, table)


@block_html.register
def _(block: Heading) -> str:
    return f"<h3>{text(block.text)}</h3>"


@block_html.register
def _(block: Bullets) -> str:
    return "<ul>" + "".join(f"<li>{text(item)}</li>" for item in block.items) + "</ul>"


@block_html.register
def _(block: Paragraph) -> str:
    return f"<p>{text(block.text)}</p>"


def anchor(number: str) -> str:
    """A section's id from its number ("3." -> "section-3"), unique where titles need not be."""
    return "section-" + number.rstrip(".")


def section_html(section: Section, number: str) -> str:
    parts = [f'<section id="{anchor(number)}"><h2>{number} {text(section.title)}</h2>']
    if section.subtitle:
        parts.append(f'<p class="subtitle">{text(section.subtitle)}</p>')
    parts += [block_html(block) for block in layout(section.blocks)]
    return "\n".join(parts + ["</section>"])


def render(document: Document) -> str:
    facts = "".join(f"<dt>{text(key)}</dt><dd>{text(value)}</dd>" for key, value in document.facts)
    numbered = [(f"{i}.", s) for i, s in enumerate(document.sections, 1)]
    numbered += [(f"{chr(ord('A') + i)}.", s) for i, s in enumerate(document.appendix)]
    contents = "".join(f'<li><a href="#{anchor(number)}">{number} {text(s.title)}</a></li>' for number, s in numbered)
    warning = f'<p class="warning">{text(document.warning)}</p>' if document.warning else ""
    body = "\n".join(section_html(section, number) for number, section in numbered)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(document.title)}</title>'
            f'<link rel="icon" href="data:,"><style>{STYLE}</style></head><body>\n<h1>{text(document.title)}</h1>'
            f'{warning}<dl class="facts">{facts}</dl><nav><ol style="list-style:none">{contents}</ol></nav>\n'
            f"{body}\n</body></html>\n")
