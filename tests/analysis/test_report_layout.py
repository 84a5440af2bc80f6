"""The report as a person reads it: headline first, tables that fit, links that work, trials in
rank order, the exported bundle told which TTA policy was chosen; and, where Chromium is
installed, the page laid out at 1400 px (`bench.report_screenshot`)."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from analysis.document import _inline_html
from analysis.tables import compact, display
from bench.report_screenshot import browser, layout, screenshot
from trainables.experiment import COMPLETED
from trainables.model_card import MODEL_CARD_FILE


def test_headline_comes_first_with_test_accuracy_and_precision(smoke_report):
    exp, doc, tables, out = smoke_report
    kinds = [kind for kind, _ in doc.blocks]
    assert kinds[:2] == ["heading", "table"]  # the title, then the headline table
    caption, shown, csv, css = doc.blocks[1][1]
    assert csv == "headline.csv" and "headline" in css
    assert {"test acc (%)", "test precision (%)"} <= set(shown.columns)
    head = pd.read_csv(out / "headline.csv")
    best = exp.best_trial()
    assert head["trial"].astype(str).iloc[0] == best.trial_id
    # Same numbers as Table 1's row of the best trial's balance strategy.
    t1 = tables["table1_balance"].set_index("balance").loc[best.params["balance"]]
    assert head["test_acc"].iloc[0] == pytest.approx(t1["test_acc"])
    assert head["test_precision_low"].iloc[0] == pytest.approx(t1["test_precision_low"])


def test_no_raw_markdown_link_in_the_html_and_links_render(smoke_report):
    out = smoke_report[3]
    page = (out / "report.html").read_text()
    text = re.sub(r"<[^>]+>", "", page)
    assert "](" not in text, "a Markdown link was printed as text"
    assert "<a href='predictions.csv'>predictions.csv</a>" in page
    assert _inline_html("see [a b](x.csv)") == "see <a href='x.csv'>a b</a>"


def test_trials_are_sorted_by_the_sweeps_metric(smoke_report):
    exp, _, _, out = smoke_report
    trials = pd.read_csv(out / "trials.csv")
    scores = trials[exp.metric].dropna().tolist()
    assert scores == sorted(scores, reverse=exp.mode == "max")
    assert str(trials["trial_id"].iloc[0]) == exp.best_trial().trial_id


def test_compact_moves_missing_rows_and_constant_columns_to_the_caption():
    table = pd.DataFrame(
        {
            "balance": ["original", "undersample", "oversample"],
            "status": ["evaluated", "missing: not in the sweep", "evaluated"],
            "gpu_hours": [0.0, float("nan"), 0.0],
            "val_acc": [0.5, float("nan"), 0.6],
            "val_acc_low": [0.4, float("nan"), 0.5],
            "val_acc_high": [0.6, float("nan"), 0.7],
            "test_acc": [0.55, float("nan"), 0.65],
            "test_acc_low": [0.45, float("nan"), 0.55],
            "test_acc_high": [0.65, float("nan"), 0.75],
        }
    )
    shown, notes = compact(display(table))
    # Test first, then validation; the constant GPU-hours and the status column are gone.
    assert shown.columns.tolist() == ["balance", "test acc (%)", "val acc (%)"]
    # A result column stays even when every row has the same value (a tie is a finding).
    table[["val_acc", "val_acc_low", "val_acc_high"]] = [0.5, 0.4, 0.6]
    assert "val acc (%)" in compact(display(table))[0]
    assert shown["balance"].tolist() == ["original", "oversample"]
    assert notes == [
        "No numbers for `undersample` (missing: not in the sweep).",
        "Same in every row: GPU-hours 0.",
    ]


def test_every_page_table_with_rows_to_compare_has_no_constant_column(smoke_report):
    doc = smoke_report[1]
    for kind, value in doc.blocks:
        if kind != "table" or len(value[1]) < 2:
            continue
        caption, shown = value[0], value[1]
        constant = [c for c in shown.columns[1:] if shown[c].nunique() == 1 and "(%)" not in c]
        constant = [c for c in constant if c not in ("right → wrong", "wrong → right", "net")]
        constant = [c for c in constant if c not in ("McNemar p", "verdict", "importance")]
        assert not constant, (caption, constant)


def test_importance_on_few_trials_carries_a_caveat(smoke_report):
    exp, doc, tables, _ = smoke_report
    assert "importance" in tables  # the smoke sweep varies lr and balance
    complete = sum(t.status == COMPLETED for t in exp.trials)
    texts = " ".join(str(v) for kind, v in doc.blocks if kind == "text")
    assert f"{complete} of the sweep's {len(exp.trials)} trials are complete" in texts
    assert "Caution" in texts
    # Fitted on the sweep's own journal: its trials, its distributions (optuna-dashboard's).
    assert "Importance is fitted on " in texts and "trials" in texts


def test_the_report_records_the_chosen_policy_in_the_exported_bundle(smoke_report):
    exp, _, tables, _ = smoke_report
    meta = json.loads((exp.path / "export" / "bundle.json").read_text())
    t4 = tables["table4_tta"]
    chosen = t4.loc[t4["chosen_on_val"].astype(bool), "policy"].item()
    assert meta["tta"]["policy"] == chosen
    acc = next(
        m for m in meta["evaluation"]["metrics"] if (m["metric"], m["tta"]) == ("acc", "none")
    )
    row = t4.set_index("policy").loc["none"]
    assert (acc["value"], acc["low"], acc["high"]) == pytest.approx(
        (row["test_acc"], row["test_acc_low"], row["test_acc_high"])
    )
    card = (exp.path / "export" / MODEL_CARD_FILE).read_text()
    assert f"`{chosen}`" in card and "95 %" in card


@pytest.mark.skipif(browser() is None, reason="needs chromium (apt-get install chromium)")
def test_at_1400_px_the_headline_is_on_the_first_screen_and_nothing_scrolls_sideways(
    smoke_report,
):
    out = smoke_report[3]
    page = out / "report.html"
    facts = layout(page, 1400, 1000)
    assert facts["scroll_width"] <= facts["client_width"], facts
    assert facts["wide_tables"] == [], facts
    assert facts["headline_bottom"] is not None and facts["headline_bottom"] < 1000, facts
    assert {"test acc (%)", "test precision (%)"} <= set(facts["headline_columns"])
    shot = screenshot(page, out / "screenshot-1400px.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
