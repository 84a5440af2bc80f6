"""The report as a list of blocks (headings, paragraphs, tables, figures), rendered as Markdown
and as one self-contained HTML file (figures embedded as base64 PNG); tables also go to CSV."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis.tables import compact, display, to_markdown
from trainables.cache import atomic_write_text


@dataclass
class Document:
    """Headings, paragraphs, tables and figures, rendered as Markdown and as one HTML file."""

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
                parts.append(f"{to_markdown(frame)}\n\n*{caption}* ([{csv}]({csv}))")
            else:
                caption, path = value
                parts.append(f"![{caption}]({path.name})\n\n*{caption}*")
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
                # An interval may wrap after its value, never inside its brackets.
                table = _INTERVAL.sub(lambda m: m[0].replace(" ", "&nbsp;"), table)
                body.append(
                    f"<figure>{table}<figcaption>{_inline_html(caption)} "
                    f"(<a href='{csv}'>{csv}</a>)</figcaption></figure>"
                )
            else:
                caption, path = value
                data = base64.b64encode(path.read_bytes()).decode("ascii")
                body.append(
                    f"<figure><img alt='{html.escape(caption)}' "
                    f"src='data:image/png;base64,{data}'>"
                    f"<figcaption>{_inline_html(caption)}</figcaption></figure>"
                )
        return _HTML.format(title=html.escape(title), body="\n".join(body))


_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 76rem; margin: 1.2rem auto; padding: 0 1rem;
       line-height: 1.4; color: #222; }}
h1 {{ font-size: 1.6rem; margin: 0.4rem 0 0.6rem; }}
table.t {{ border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0; max-width: 100%; }}
table.t th, table.t td {{ border-bottom: 1px solid #ddd; padding: 0.25rem 0.5rem;
                          text-align: right; white-space: normal; overflow-wrap: break-word;
                          vertical-align: top; }}
table.t th {{ background: #f3f3f3; }}
table.t td:first-child, table.t th:first-child {{ text-align: left; }}
table.headline {{ font-size: 1.05rem; }}
table.headline td {{ font-variant-numeric: tabular-nums; }}
figure {{ margin: 1rem 0 1.5rem; overflow-x: auto; }}
figcaption {{ font-style: italic; font-size: 0.9rem; color: #555; }}
img {{ max-width: 100%; }}
code {{ background: #f3f3f3; padding: 0 0.2rem; }}
</style></head>
<body>
{body}
</body></html>
"""


_INTERVAL = re.compile(r"\[-?[\d.]+, -?[\d.]+\]")
_LINK = re.compile(r"\[([^\]\n]+)\]\(([^)\s]+)\)")


def _inline_html(text: str) -> str:
    """Escape, then render the only Markdown the report's prose uses: `code`, **bold**, links,
    lists."""
    escaped = html.escape(text)
    parts = escaped.split("`")
    escaped = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    parts = escaped.split("**")
    escaped = "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(parts))
    # [text](target): a link; the target is escaped already and must not hold spaces.
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
