"""The report on a real small sweep: its five tables, figures, intervals, and its agreement with
the sweep's own numbers and with `analysis.predict`."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from smoke_sweep import SMOKE_TRIALS

from analysis import predict, report
from analysis.evaluate import Evaluator
from analysis.tables import EVALUATED
from trainables.balance import BALANCES
from trainables.calibration import scaled_probs
from trainables.models import MODELS

pytestmark = pytest.mark.slow

FIGURES = ("confusion", "curves", "tsne", "asha", "importance", "reliability", "saliency")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_report_holds_the_five_tables_with_their_rows_and_columns(smoke_report):
    exp, doc, tables, out = smoke_report
    md = (out / "report.md").read_text()
    for n in range(1, 6):
        # Each of the seed's tables appears in the report, captioned as the seed numbers them.
        assert f"*Table {n}:" in md
    t1 = pd.read_csv(out / "table1_balance.csv")
    # Every balance strategy has a row, in registry order, covered by the sweep or not.
    assert t1["balance"].tolist() == list(BALANCES)
    assert {"val_acc", "test_acc", "test_precision", "test_acc_low", "test_acc_high",
            "parameters", "epochs", "gpu_hours"} <= set(t1.columns)  # fmt: skip
    status = dict(zip(t1["balance"], t1["status"], strict=True))
    # spaces/smoke.py searches original and oversample only: the others are missing rows.
    assert status["original"] == status["oversample"] == EVALUATED
    assert status["undersample"].startswith("missing") and status["class_weights"].startswith(
        "missing"
    )
    t2 = pd.read_csv(out / "table2_balance_per_class.csv")
    assert {"test_acc_normal", "test_acc_bacteria", "test_acc_viral"} <= set(t2.columns)
    t3 = pd.read_csv(out / "table3_architectures.csv")
    assert t3["model"].tolist() == list(MODELS)
    assert t3.set_index("model").loc["simple_cnn_10m", "status"] == EVALUATED
    assert t3.set_index("model").loc["resnet50", "status"].startswith("missing")
    t4 = pd.read_csv(out / "table4_tta.csv")
    # No TTA first, then the seed's two policies and the deterministic one, each with its cost
    # and McNemar's test against no TTA.
    assert t4["policy"].tolist()[:4] == ["none", "tta1", "tta2", "mirror"]
    assert t4["cost"].tolist()[:4] == [1, 3, 3, 2]
    assert {"mcnemar_p", "verdict", "right_to_wrong", "wrong_to_right"} <= set(t4.columns)
    assert t4["chosen_on_val"].sum() == 1
    flips = pd.read_csv(out / "table4_tta_flips.csv")
    assert set(flips["class"]) == {"NORMAL", "BACTERIA", "VIRAL"}
    t5 = pd.read_csv(out / "table5_cnn_size.csv")
    assert t5["model"].tolist() == ["simple_cnn", "simple_cnn_10m"]
    # The 10M CNN's row carries its parameter count (at 32 px its head is smaller than 10M).
    assert t5.set_index("model").loc["simple_cnn_10m", "parameters"] > 1_000_000


def test_figures_exist_and_the_html_page_embeds_them(smoke_report):
    _, doc, _, out = smoke_report
    for name in FIGURES:
        # Each figure is a real PNG file next to the report.
        assert (out / f"{name}.png").read_bytes()[:8] == PNG_MAGIC, name
    page = (out / "report.html").read_text()
    # Self-contained: every figure inline as base64, no reference to a PNG file.
    assert page.count("data:image/png;base64,") == len(doc.figures) == len(FIGURES)
    assert ".png'" not in page and "<table" in page


def test_every_interval_in_every_table_contains_its_point_estimate(smoke_report):
    _, doc, _, _ = smoke_report
    checked = 0
    for path in doc.csvs:
        table = pd.read_csv(path)
        for col in [c for c in table.columns if f"{c}_low" in table.columns]:
            rows = table[table[col].notna()]
            # A CI that excludes its own estimate would be a bug in the bootstrap.
            assert (rows[f"{col}_low"] <= rows[col] + 1e-12).all(), (path.name, col)
            assert (rows[col] <= rows[f"{col}_high"] + 1e-12).all(), (path.name, col)
            checked += len(rows)
    assert checked > 20


def test_report_reproduces_the_sweeps_validation_score(smoke_report):
    exp, _, tables, _ = smoke_report
    best = exp.best_trial()
    t1 = tables["table1_balance"].set_index("balance")
    row = t1.loc[best.params["balance"]]
    history = best.history.set_index("epoch").loc[best.best_epoch]
    # Re-evaluating the chosen checkpoint gives the validation accuracy the trial reported at
    # that epoch: the checkpoint-to-epoch mapping and the preprocessing are right.
    assert row["trial_id"] == best.trial_id
    assert row["val_acc"] == pytest.approx(history["val_acc"], abs=1e-9)


def test_statuses_agree_with_the_sweeps_own_summary(smoke_experiment, smoke_report):
    exp = smoke_report[0]
    summary = json.loads((smoke_experiment / "summary.json").read_text())
    stopped = {row["trial_id"] for row in summary["stopped_early"]}
    # What ASHA stopped, read from files, matches what the live sweep reported.
    assert {t.trial_id for t in exp.trials if t.status == "stopped early"} == stopped
    assert len(exp.trials) == summary["trials"] == SMOKE_TRIALS
    assert exp.missing == []


def test_predict_gives_the_reports_class_and_probabilities(smoke_experiment, smoke_report, capsys):
    exp, _, _, out = smoke_report
    bundle_meta = json.loads((smoke_experiment / "export" / "bundle.json").read_text())
    best = exp.best_trial()
    # The exported bundle is the checkpoint the report ranks first.
    assert bundle_meta["source"]["trial"] == best.path.name
    assert bundle_meta["source"]["checkpoint"] == best.best_checkpoint.name
    preds = pd.read_csv(out / "predictions.csv")
    root = Evaluator("cpu").dataset(best.config).root
    chosen = preds.groupby("label").head(2)  # two test images of each class
    capsys.readouterr()
    rc = predict.main(
        [str(smoke_experiment / "export"), *[str(root / p) for p in chosen["image"]], "--json"]
    )
    assert rc == 0
    result = json.loads(capsys.readouterr().out)["predictions"]
    temperature = bundle_meta["calibration"]["temperature"]
    for row, got in zip(chosen.itertuples(), result, strict=True):
        # Same image file, same class and probabilities as the report's test evaluation, which
        # predict scales by the bundle's temperature: softmax(log p / T) = softmax(logits / T).
        assert got["class"] == row.pred
        expected = [row.prob_normal, row.prob_bacteria, row.prob_viral]
        expected = scaled_probs(np.log(np.array([expected])), temperature)[0]
        actual = [got["probabilities"][c] for c in ("NORMAL", "BACTERIA", "VIRAL")]
        np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5)


def test_report_logs_tables_and_figures_to_wandb_offline(smoke_report, monkeypatch):
    exp, doc, tables, _ = smoke_report
    monkeypatch.setenv("WANDB_MODE", "offline")
    runs = exp.path / "wandb"  # next to the trials' runs: one `wandb sync` finds all
    before = set(runs.glob("offline-run-*/run-*.wandb"))
    run_dir = report.log_to_wandb(exp, doc, tables)
    offline = sorted(set(runs.glob("offline-run-*/run-*.wandb")) - before)
    # W&B's own offline run file holds what `wandb sync` would upload, complete on return.
    assert len(offline) == 1 and offline[0].stat().st_size > 10_000
    assert str(runs) in run_dir
    media = offline[0].parent / "files" / "media"
    # Every figure as an image and every table as a W&B table.
    assert len(list((media / "images").glob("*.png"))) == len(doc.figures)
    assert len(list((media / "table").glob("*.table.json"))) == len(tables)


def test_summary_json_and_the_report_state_leakage_calibration_and_the_audit(
    smoke_experiment, smoke_report
):
    _, _, tables, out = smoke_report
    leakage = json.loads((smoke_experiment / "summary.json").read_text())["leakage"]
    # The driver wrote the leakage record: the phantom keeps each patient in one split.
    assert set(leakage["patients"]) == {"train", "val", "test"}
    assert leakage["patients_in_two_splits"] == [] and leakage["near_duplicate_count"] == 0
    md = (out / "report.md").read_text()
    for heading in ("## Calibration", "## Shortcut audit", "## Leakage between splits"):
        assert heading in md
    cal = pd.read_csv(out / "calibration.csv")
    # Test ECE before and after, with the temperature the bundle stores (fitted on val there).
    bundle_t = json.loads((smoke_experiment / "export" / "bundle.json").read_text())["calibration"][
        "temperature"
    ]
    fitted = cal[cal["scaling"] == "temperature"]["temperature"].unique()
    assert len(fitted) == 1 and fitted[0] == pytest.approx(bundle_t, rel=1e-4)
    assert set(cal["split"]) == {"val", "test"}
    audit = pd.read_csv(out / "shortcut_audit.csv")
    assert list(audit["class"]) == ["NORMAL", "BACTERIA", "VIRAL"]
