"""The one rule for putting a string the data named (a class folder, a path, a manifest column,
an experiment name, an error quoting one of them) into a Markdown document: `md_text` in prose
(`md_code` shows a plain name as code), `md_cell` in a table cell. Every Markdown document the
product writes (report.md, report.html through `analysis.document`, MODEL_CARD.md) puts data in
through these and nothing else.

Every character that Markdown (CommonMark and GitHub's extensions) gives a meaning inside a line
is backslash-escaped, so a name is shown exactly as it is spelled and never becomes a link, an
image, emphasis, code, raw HTML, an entity or an autolink: `[click](javascript:x)` stays text,
`**bold**` is not bold, `<img>` is not a tag. A line break or another control character is shown
as its escape (`\\n`), so a value can never start a line of its own (a heading, a list, a fence).
Nothing is dropped: the rendered text reads as the name does.
"""

from __future__ import annotations

import re
import unicodedata

# Characters with an inline meaning: escape, code, emphasis, strikethrough, links and images,
# raw HTML and autolinks, entities, GitHub math and e-mail autolinks (`a@b.c`).
_INLINE = frozenset("\\`*_~[]!<>&$@")
# What makes a line a heading, list item or rule where a value starts one: a leading `#`, a
# `+`, `-` or `=` before a space or another of them, or `1.` / `1)` before a space.
_LEADING = re.compile(r"^( *)(#|[+=-](?=[\s+=-]|$)|\d{1,9}[.)](?=\s|$))")
# GitHub links bare `http://...` and `www.example.com`: escaping the scheme's colon and the
# first dot prevents that.
# What `md_code` shows as code: no backtick, line break, `|`, `<`, `*`, `[` or `\\`, no space at
# either end.
_PLAIN = re.compile(r"[\w.,:;/+=@%()'\"-]+(?: +[\w.,:;/+=@%()'\"-]+)*")
_AUTOLINK = re.compile(r"(?i):(?=/)|(?<=\bwww)\.")


def md_text(value: object) -> str:
    """`value` as Markdown text that renders exactly as its characters (see the module doc)."""
    out = []
    for char in str(value):
        if unicodedata.category(char) in ("Cc", "Zl", "Zp"):
            # A line break or control character shown as its Python escape: `\n`, `\x00`.
            out.append("\\" + char.encode("unicode_escape").decode("ascii"))
        elif char in _INLINE:
            out.append("\\" + char)
        else:
            out.append(char)
    text = _AUTOLINK.sub(lambda m: "\\" + m[0], "".join(out))
    return _LEADING.sub(lambda m: m[1] + m[2][:-1] + "\\" + m[2][-1], text, count=1)


def md_code(value: object) -> str:
    """`value` as inline code when every character of it is plain (letters, digits, spaces
    inside, and `.,:;/+=@%()'"-`), else as `md_text`: a name is shown as code unless it could
    close the code span or mean something to a renderer."""
    text = str(value)
    return f"`{text}`" if _PLAIN.fullmatch(text) else md_text(text)


def md_cell(value: object) -> str:
    """`value` as the text of a GitHub Markdown table cell: `md_text`, and `|` escaped so it
    cannot split the cell."""
    return md_text(value).replace("|", "\\|")
