"""The report as a list of blocks (headings, paragraphs, tables, figures), rendered as Markdown
and as one self-contained HTML file (figures embedded as base64 PNG); tables also go to CSV."""

from __future__ import annotations

import base64
import hashlib
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pandas as pd

from analysis.tables import compact, display, to_markdown
from trainables.cache import atomic_write_text
from trainables.markdown import md_text


@dataclass
class Document:
    """Headings, paragraphs, tables and figures, rendered as Markdown and as one HTML file.

    Headings, paragraphs and captions are Markdown written by the product: a string the data
    named goes in through `trainables.markdown.md_text` (tables are escaped here, cell by cell),
    so the only links on the page are the product's own, to files next to the report."""

    out: Path
    blocks: list[tuple[str, object]] = field(default_factory=list)
    csvs: list[Path] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("heading", (level, text)))

    def text(self, text: str) -> None:
        self.blocks.append(("text", text))

    def table(self, name: str, caption: str, table: pd.DataFrame, css: str = "t") -> None:
        """A table as CSV (every column) and on the page in its compact display form (rows
        without numbers and constant columns move to the caption, see `tables.compact`)."""
        path = self.out / f"{name}.csv"
        atomic_write_text(path, table.to_csv(index=False))
        self.csvs.append(path)
        shown, notes = compact(display(table))
        caption = " ".join([caption.rstrip(".") + ".", *notes]) if notes else caption
        self.blocks.append(("table", (caption, shown, path.name, css)))

    def csv(self, name: str, table: pd.DataFrame) -> Path:
        """A table written as CSV only (too long for the page)."""
        path = self.out / f"{name}.csv"
        atomic_write_text(path, table.to_csv(index=False))
        self.csvs.append(path)
        return path

    def figure(self, path: Path, caption: str) -> None:
        self.figures.append(path)
        self.blocks.append(("figure", (caption, path)))

    def markdown(self) -> str:
        parts = []
        for kind, value in self.blocks:
            if kind == "heading":
                level, text = value
                parts.append("#" * level + " " + text)
            elif kind == "text":
                parts.append(str(value))
            elif kind == "table":
                caption, frame, csv, _ = value
                parts.append(f"{to_markdown(frame)}\n\n*{caption}* ({file_link(csv)})")
            else:
                caption, path = value
                parts.append(f"![{caption}]({quote(path.name, safe='')})\n\n*{caption}*")
        return "\n\n".join(parts) + "\n"

    def html(self, title: str) -> str:
        body = []
        for kind, value in self.blocks:
            if kind == "heading":
                level, text = value
                body.append(f"<h{level}>{_inline_html(text)}</h{level}>")
            elif kind == "text":
                body.append(f"<p>{_inline_html(str(value))}</p>")
            elif kind == "table":
                caption, frame, csv, css = value
                table = frame.to_html(index=False, border=0, classes=css, escape=True)
                # pandas styles the header row inline, which the page's policy blocks; the
                # stylesheet aligns it instead.
                table = table.replace(' style="text-align: right;"', "")
                # An interval may wrap after its value, never inside its brackets.
                table = _INTERVAL.sub(lambda m: m[0].replace(" ", "&nbsp;"), table)
                body.append(
                    f"<figure>{table}<figcaption>{_inline_html(caption)} "
                    f"({_inline_html(file_link(csv))})</figcaption></figure>"
                )
            else:
                caption, path = value
                data = base64.b64encode(path.read_bytes()).decode("ascii")
                alt = _TAG.sub("", _inline_html(caption))
                body.append(
                    f"<figure><img alt='{alt}' src='data:image/png;base64,{data}'>"
                    f"<figcaption>{_inline_html(caption)}</figcaption></figure>"
                )
        return _HTML.format(title=html.escape(title), csp=_CSP, style=_STYLE, body="\n".join(body))


def file_link(name: str) -> str:
    """A Markdown link to the file `name` next to the report (its name shown as text): the one
    kind of link the report has."""
    return f"[{md_text(name)}]({quote(name, safe='')})"


_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 76rem; margin: 1.2rem auto; padding: 0 1rem;
       line-height: 1.4; color: #222; }
h1 { font-size: 1.6rem; margin: 0.4rem 0 0.6rem; }
table.t { border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0; max-width: 100%; }
table.t th, table.t td { border-bottom: 1px solid #ddd; padding: 0.25rem 0.5rem;
                         text-align: right; white-space: normal; overflow-wrap: break-word;
                         vertical-align: top; }
table.t th { background: #f3f3f3; }
table.t td:first-child, table.t th:first-child { text-align: left; }
table.headline { font-size: 1.05rem; }
table.headline td { font-variant-numeric: tabular-nums; }
figure { margin: 1rem 0 1.5rem; overflow-x: auto; }
figcaption { font-style: italic; font-size: 0.9rem; color: #555; }
img { max-width: 100%; }
code { background: #f3f3f3; padding: 0 0.2rem; }
"""
# The page runs no script and loads nothing: images are inline PNG data, the one stylesheet is
# allowed by its hash, and links (to the CSV files next to it) are the only way out.
_CSP = (
    "default-src 'none'; img-src data:; "
    f"style-src 'sha256-{base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()}'; "
    "base-uri 'none'; form-action 'none'"
)
_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<title>{title}</title>
<style>{style}</style></head>
<body>
{body}
</body></html>
"""


_INTERVAL = re.compile(r"\[-?[\d.]+, -?[\d.]+\]")
# [text](target): the product's links, to a file next to the report (a percent-quoted name: no
# scheme, no slash, no space), never anything a data string spells (its brackets are escaped).
_LINK = re.compile(r"\[([^\]\n]+)\]\(([\w.%-]+)\)")
_ESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")  # a backslash-escaped ASCII punctuation character
_TAG = re.compile(r"<[^>]+>")


def _inline_html(text: str) -> str:
    """Escape, then render the only Markdown the report's prose uses: `code`, **bold**, links,
    lists. A backslash-escaped character (how `md_text` writes what the data named) becomes a
    character reference first, so it is shown as itself and opens no code, bold or link."""
    pieces, start = [], 0
    for m in _ESCAPE.finditer(text):
        pieces += [html.escape(text[start : m.start()]), f"&#{ord(m[1])};"]
        start = m.end()
    escaped = "".join([*pieces, html.escape(text[start:])])
    parts = escaped.split("`")
    escaped = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    parts = escaped.split("**")
    escaped = "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(parts))
    escaped = _LINK.sub(lambda m: f"<a href='{m[2]}'>{m[1]}</a>", escaped)
    lines = escaped.split("\n")
    if all(line.startswith("- ") for line in lines):
        return "<ul>" + "".join(f"<li>{line[2:]}</li>" for line in lines) + "</ul>"
    return "<br>".join(lines)


def write_report(doc: Document, title: str) -> tuple[Path, Path]:
    md, page = doc.out / "report.md", doc.out / "report.html"
    atomic_write_text(md, doc.markdown())
    atomic_write_text(page, doc.html(title))
    return md, page
