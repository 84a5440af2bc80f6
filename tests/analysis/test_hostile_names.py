"""Class folders, paths and an experiment name spelled to attack the report: report.html and
report.md show each one as written and none becomes a link, a tag, bold text or a table cell."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import prose, tables
from analysis.document import Document, _inline_html, write_report
from analysis.load import Experiment, TrialRecord
from analysis.tables import Scored, TrialEval
from analysis.tta import TTA_POLICIES
from search import storage
from trainables.data import DataReport
from trainables.experiment import DATA_REPORT_FILE, ScoredCheckpoint, data_report_json
from trainables.markdown import md_cell, md_code, md_text

LINK = "[click](javascript:alert%281%29)"
HOSTILE = [LINK, "**bold**", "a|b", "<img src=x onerror=alert(1)>"]
ROOT = "/data/</p><script>alert(2)</script>"
NAME = "run`<b>x</b>`_[y](https://evil.example)"
# Tags the report is made of; anything else came from the data.
PAGE_TAGS = {
    "html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "br", "ul", "li",
    "code", "strong", "a", "figure", "figcaption", "table", "thead", "tbody", "tr", "th", "td",
}  # fmt: skip
MARKDOWN_PUNCTUATION = re.compile(r"\\[!-/:-@\[-`{-~]")


class _Page(HTMLParser):
    """The page's tags, link targets and visible text, as a browser's parser reads them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.hrefs: list[str] = []
        self.text: list[str] = []
        self.csp = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        values = dict(attrs)
        self.hrefs += [v or "" for k, v in attrs if k in ("href", "src", "action")]
        if values.get("http-equiv") == "Content-Security-Policy":
            self.csp = values.get("content") or ""

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _hostile_document(out: Path) -> Document:
    """The intro, data and TTA sections (with their tables) of a report whose classes, data
    root, test paths, experiment name and notes are hostile."""
    labels = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    probs = np.eye(4)[labels] * 0.7 + 0.075
    scored = Scored(labels, labels, probs, HOSTILE)
    flipped = Scored(labels, np.roll(labels, 1), probs, HOSTILE)
    trial_dir = out / "trial"
    best = ScoredCheckpoint(trial_dir, "train_00001", 2, trial_dir / "checkpoint_000001", 0.9, {})
    record = TrialRecord(
        "train_00001", trial_dir, {"model": "simple_cnn_10m", "balance": "original"}, None,
        pd.DataFrame(), "TERMINATED", 3, best=best,
    )  # fmt: skip
    ev = TrialEval(
        record, HOSTILE, 1000, scored, scored,
        tta={"none": (TTA_POLICIES["none"], scored), "mirror": (TTA_POLICIES["mirror"], flipped)},
        test_paths=[f"{c}/{i}.png" for i, c in enumerate(HOSTILE * 2)], data_root=ROOT,
    )  # fmt: skip
    data_dir = out / "experiment"
    report = DataReport(
        ROOT, "image-folder", HOSTILE, {"train": {c: 5 for c in HOSTILE}},
        skipped=[{"path": f"{ROOT}/{LINK}/x.png", "reason": "<b>not an image</b>"}],
        notes=[f"folder {HOSTILE[1]} renamed"], sources={c: [c + "_src"] for c in HOSTILE},
    )  # fmt: skip
    # As the driver saves it (search.plan.save_data_report).
    storage.write_text(str(data_dir / DATA_REPORT_FILE), data_report_json([report.to_dict()]))
    missing = [f"trial {LINK}: **damaged** <i>"]
    exp = Experiment(data_dir, NAME, "val_acc", "max", 3, None, [record], missing)
    doc = Document(out)
    prose.intro_section(doc, exp, ev, "cpu", "mirror")
    prose.data_section(doc, exp)
    t = {"tta_selection_val": pd.DataFrame({"policy": ["none", "mirror"], "val_acc": [0.5, 0.6]})}
    t["table4_tta"], t["table4_tta_flips"] = tables.tta_table(ev, "mirror")
    prose.tta_section(doc, t, ev, "mirror")
    doc.table("per_class", "Per class", tables.balance_class_table(exp, {}, ["x"], HOSTILE))
    return doc


@pytest.fixture(scope="module")
def hostile_report(tmp_path_factory) -> tuple[str, str]:
    out = tmp_path_factory.mktemp("hostile")
    md, page = write_report(_hostile_document(out), f"cxr-tune results: {NAME}")
    return md.read_text(), page.read_text()


def test_the_html_page_has_only_its_own_tags_links_and_a_strict_policy(hostile_report):
    _, page = hostile_report
    parsed = _Page()
    parsed.feed(page)
    # No tag from a name (no <script>, <img> from a class folder, <b> from a reason).
    assert set(parsed.tags) <= PAGE_TAGS | {"img"}
    assert parsed.tags.count("img") == 0  # this document has no figures
    # Every link is to a file next to the report: no scheme, so no javascript: or https:.
    assert parsed.hrefs and all(re.fullmatch(r"[\w.%-]+", h) for h in parsed.hrefs)
    assert not re.search(r"""(href|src)\s*=\s*['"]?\s*javascript:""", page, re.I)
    assert "<strong>bold</strong>" not in page
    # The page runs no script and loads nothing from elsewhere.
    assert "default-src 'none'" in parsed.csp and "script-src" not in parsed.csp


def test_the_html_page_shows_every_hostile_name_as_spelled(hostile_report):
    _, page = hostile_report
    parsed = _Page()
    parsed.feed(page)
    text = "".join(parsed.text)
    for name in [*HOSTILE, ROOT, NAME, "<b>not an image</b>"]:
        assert name in text, name


def _cells(line: str) -> list[str]:
    """A Markdown table row's cells, split at pipes that are not backslash-escaped."""
    return re.split(r"(?<!\\)(?:\\\\)*\|", line.strip())[1:-1]


def _unescaped(markdown: str) -> str:
    """Markdown with every backslash escape removed: what is left has its Markdown meaning."""
    return MARKDOWN_PUNCTUATION.sub("", markdown)


def test_report_md_tables_keep_their_shape_and_names_stay_text(hostile_report):
    md, _ = hostile_report
    assert md.count("\n|---") >= 4  # the tables are there
    width = None
    for line in md.splitlines():
        if not line.startswith("|"):
            width = None
            continue
        width = width or len(_cells(line))
        # a|b in a header or a cell does not add a cell: every row as wide as its header
        assert len(_cells(line)) == width, line
    meaning = _unescaped(md)
    assert "<" not in meaning  # no raw HTML from a name
    assert "**bold**" not in meaning
    # The only links are the report's own, to its CSV files (a name's brackets are escaped).
    assert all(re.fullmatch(r"[\w.%-]+", t) for t in re.findall(r"\]\(([^)]*)\)", meaning))
    assert "`" + NAME not in md  # a name that could close a code span is not put in one


@pytest.mark.parametrize(
    "value",
    [*HOSTILE, ROOT, NAME, "two\nlines", "- item", "1. first", "# h", "www.evil.example",
     "https://evil.example", "&amp;", "a\\*b", " ", ""],
)  # fmt: skip
def test_md_text_renders_back_to_the_value_with_no_markup(value):
    html = _inline_html(md_text(value))
    parsed = _Page()
    parsed.feed(html)
    # Nothing but text, and the text is the value (a line break shown as its escape).
    assert parsed.tags == [] and "".join(parsed.text) == value.replace("\n", "\\n")
    assert "\n" not in md_text(value)
    assert len(_cells("| " + md_cell(value) + " |")) == 1  # one cell, whatever it holds
    # md_code shows a plain name as code, anything else as md_text does.
    code = _Page()
    code.feed(_inline_html(md_code(value)))
    assert set(code.tags) <= {"code"} and "".join(code.text) == value.replace("\n", "\\n")
