"""The report's sections: the words, tables and figures of each, in the seed study's order.

Each `*_section` adds its part to a `Document`; `analysis.report.build_report` calls them in turn.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from analysis import plots, tables
from analysis.document import Document, file_link
from analysis.evaluate import Evaluator
from analysis.load import Experiment, TrialRecord
from analysis.tables import TrialEval
from analysis.tta import SEED_POLICIES
from trainables.data import DataReport
from trainables.experiment import COMPLETED, read_data_report
from trainables.markdown import md_code, md_text
from trainables.train import model_from_checkpoint

# fANOVA on fewer complete trials than this ranks parameters mostly by noise.
IMPORTANCE_MIN_COMPLETE = 30


def _num(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _pct(value: float) -> str:
    return f"{100 * value:.1f} %"


def best_by(exp: Experiment, key: str, groups: Sequence[str]) -> dict[str, TrialRecord | None]:
    return {g: exp.best_trial([t for t in exp.trials if t.params.get(key) == g]) for g in groups}


def headline_table(best: TrialEval, chosen: str = "none") -> pd.DataFrame:
    """The results a reader came for: the best trial's test accuracy and precision with their
    intervals, without TTA and with the policy chosen on validation."""
    rows = []
    for name in dict.fromkeys(["none", chosen]):
        if name not in best.tta:
            continue
        policy, scored = best.tta[name]
        row: dict[str, object] = {"TTA policy": name, "trial": best.trial.trial_id}
        for key in ("acc", "precision"):
            ci = scored.intervals[key]
            row[f"test_{key}"], row[f"test_{key}_low"], row[f"test_{key}_high"] = (
                ci.value,
                ci.low,
                ci.high,
            )
        row.update({"test images": len(scored.labels), "passes / image": policy.cost})
        rows.append(row)
    return pd.DataFrame(rows)


def intro_section(
    doc: Document, exp: Experiment, best: TrialEval, device: str, chosen: str = "none"
) -> None:
    counts = pd.Series([t.status for t in exp.trials]).value_counts()
    statuses = ", ".join(f"{n} {s}" for s, n in counts.items())
    ci = best.test.intervals["acc"]
    cfg = best.trial.params
    doc.heading(f"Results: experiment {md_code(exp.name)}", 1)
    doc.table(
        "headline",
        f"The best trial by {md_code(exp.metric)} ({exp.mode}) on validation, evaluated once on "
        "the test split: accuracy and macro precision with 95 % bootstrap intervals, without TTA"
        + ("" if chosen == "none" else f" and with {md_code(chosen)}, chosen on validation"),
        headline_table(best, chosen),
        css="t headline",
    )
    doc.text(
        f"The sweep ran {len(exp.trials)} trials ({statuses}), ranked by {md_code(exp.metric)} "
        f"({exp.mode}) at each trial's best checkpoint. The best trial, "
        f"{md_code(best.trial.trial_id)} ({md_code(cfg.get('model'))}, balance "
        f"{md_code(cfg.get('balance'))}, augment {md_code(cfg.get('augment', 'none'))}, lr "
        f"{md_text(_num(cfg.get('lr')))}), reached {md_text(exp.metric)} "
        f"{best.trial.best_score:.4f} at epoch {best.trial.best_epoch} and scores "
        f"**{ci.format()} %** test accuracy without TTA on {len(best.test.labels)} test images."
    )
    doc.text(
        "Every accuracy is shown as `value [low, high]`: the 95 % percentile-bootstrap interval "
        "over test images (2,000 seeded resamples). Precision is macro-averaged over the "
        f"{len(best.classes)} classes ({', '.join(map(md_code, best.classes))}), as the seed "
        "reports it; "
        "per-class accuracy is the recall of that class."
    )
    if exp.missing:
        doc.heading("What this report cannot cover", 3)
        doc.text("\n".join(f"- {md_text(m)}" for m in exp.missing))


def data_section(doc: Document, exp: Experiment) -> None:
    """The sweep's data as its pre-flight found it: classes and their folders, images per
    class and split, every skipped file with its reason (`data_report.json`)."""
    reports = read_data_report(exp.path)
    if not reports:
        return
    report = DataReport.from_dict(reports[0])
    doc.heading("Data", 3)
    renamed = "; ".join(
        f"{md_code(c)} ← {', '.join(map(md_code, s))}"
        for c, s in report.sources.items()
        if s != [c]
    )
    doc.text(
        f"{md_code(report.root)} ({md_text(report.layout)}: {md_text(report.why)}), "
        f"{len(report.classes)} classes ({', '.join(map(md_code, report.classes))}"
        f"{'; ' + renamed if renamed else ''}), {report.image_size} px "
        f"{md_text(report.resize_mode)}. {len(report.skipped)} file(s) skipped, "
        f"{report.ignored_hidden} hidden file(s) ignored."
        + "".join(f"\n- {md_text(n)}" for n in report.notes)
    )
    counts = pd.DataFrame(
        [{"split": s, **c, "total": sum(c.values())} for s, c in report.counts.items()]
    )
    doc.table(
        "data_counts", "Images per class and split (validation split made by the sweep)", counts
    )
    if report.skipped:
        doc.table("data_skipped", "Files skipped, and why", pd.DataFrame(report.skipped))


def _best_row(table: pd.DataFrame, key: str) -> pd.Series | None:
    done = table[table["status"] == tables.EVALUATED]
    return None if done.empty else done.loc[done["test_acc"].idxmax()]


def _missing(table: pd.DataFrame, key: str) -> str:
    gone = table[table["status"] != tables.EVALUATED][key].tolist()
    return f" Not covered by this sweep: {', '.join(map(md_code, gone))}." if gone else ""


def balance_section(doc: Document, t: dict[str, pd.DataFrame]) -> None:
    doc.heading("1. Class balance (seed section 3.2.1)")
    top = _best_row(t["table1_balance"], "balance")
    line = (
        "The best trial of each balance strategy, chosen by the sweep's metric on validation, "
        "evaluated once on test."
    )
    if top is not None:
        line += (
            f" Highest test accuracy: {md_code(top['balance'])} with {_pct(top['test_acc'])} "
            f"(95 % CI {_pct(top['test_acc_low'])} to {_pct(top['test_acc_high'])}); a gap "
            "smaller than the intervals are wide is no evidence that one strategy is better."
        )
    doc.text(line + _missing(t["table1_balance"], "balance"))
    doc.table("table1_balance", "Table 1: results per balance strategy", t["table1_balance"])
    doc.table(
        "table2_balance_per_class",
        "Table 2: per-class test accuracy per balance strategy",
        t["table2_balance_per_class"],
    )


def architecture_section(doc: Document, t: dict[str, pd.DataFrame]) -> None:
    doc.heading("2. Architectures (seed sections 3.3 and 5)")
    top = _best_row(t["table3_architectures"], "model")
    line = "The best trial of each architecture in the model registry."
    if top is not None:
        line += f" Highest test accuracy: {md_code(top['model'])} with {_pct(top['test_acc'])}."
    doc.text(line + _missing(t["table3_architectures"], "model"))
    doc.table("table3_architectures", "Table 3: architectures compared", t["table3_architectures"])
    doc.table(
        "table5_cnn_size",
        "Table 5: the 134M SimpleCNN against the 10M SimpleCNN",
        t["table5_cnn_size"],
    )


def tta_section(doc: Document, t: dict[str, pd.DataFrame], best: TrialEval, chosen: str) -> None:
    doc.heading("3. Test-time augmentation (seed section 4)")
    table = t["table4_tta"]
    lines = []
    for _, row in table[table["policy"] != "none"].iterrows():
        gain = row["test_acc"] - table.loc[table["policy"] == "none", "test_acc"].iloc[0]
        lines.append(
            f"- {md_code(row['policy'])} ({row['cost']} passes per image): test accuracy "
            f"{100 * gain:+.1f} points against no TTA, {row['wrong_to_right']} predictions fixed "
            f"and {row['right_to_wrong']} broken; McNemar: {md_text(row['verdict'])}."
        )
    doc.text(
        f"All policies run on the best trial {md_code(best.trial.trial_id)}. `tta1` and `tta2` "
        "are the "
        "seed's (the plain image averaged with one draw of each of two views). The policy chosen "
        f"on the validation split among {len(t['tta_selection_val'])} candidates is "
        f"{md_code(chosen)}; the test split was not used to choose it."
    )
    doc.text("\n".join(lines))
    shown = chosen if chosen != "none" else SEED_POLICIES[-1]
    path = doc.csv("predictions", tables.predictions_table(best, shown))
    doc.text(
        f"Every test image's class and probabilities without TTA and with {md_code(shown)} are "
        f"in {file_link(path.name)} (paths relative to {md_code(best.data_root)})."
    )
    doc.table("table4_tta", "Table 4: no TTA against each TTA policy", table)
    doc.table(
        "table4_tta_flips",
        "Test predictions each policy turned right to wrong and wrong to right, per class",
        t["table4_tta_flips"],
    )
    doc.table(
        "tta_selection_val",
        "TTA candidates scored on the validation split (the chosen one has the highest "
        "accuracy, ties to the cheapest)",
        t["tta_selection_val"],
    )


def figures_section(
    doc: Document,
    exp: Experiment,
    evaluator: Evaluator,
    best: TrialEval,
    chosen: str,
    top_k: int,
) -> None:
    doc.heading("4. Figures")
    base = best.tta["none"][1]
    # Without and with the policy chosen on validation (the seed's TTA2 when none was chosen).
    shown = chosen if chosen != "none" else SEED_POLICIES[-1]
    preds = {"no TTA": base.preds, f"TTA {shown}": best.tta[shown][1].preds}
    path = plots.confusion_figure(base.labels, preds, best.classes, doc.out / "confusion.png")
    doc.figure(path, "Test confusion matrices of the best trial without and with TTA")
    top = exp.ranked()[: max(1, top_k)]
    path = plots.curves_figure(top, doc.out / "curves.png", exp.metric, exp.mode)
    doc.figure(
        path,
        f"Loss, accuracy and the sweep's metric {md_code(exp.metric)} per epoch of the top "
        f"{len(top)} "
        "trials by that metric",
    )
    model, cfg, _ = model_from_checkpoint(best.trial.best_checkpoint)
    data = evaluator.dataset(cfg)
    splits = {
        "train": (data.train.images, data.train.labels.numpy()),
        "test": (data.test.images, data.test.labels.numpy()),
    }
    path = plots.tsne_figure(model, splits, best.classes, evaluator.device, doc.out / "tsne.png")
    doc.figure(path, "t-SNE of the best model's penultimate features on train and test")


def sweep_section(doc: Document, exp: Experiment, t: dict[str, pd.DataFrame]) -> None:
    doc.heading("5. The sweep")
    rungs = plots.rungs(exp)
    doc.text(
        f"ASHA milestones at epochs {rungs or 'n/a'} of {exp.max_epochs or '?'}: a trial below "
        "the top share of its rung stops there."
    )
    path = plots.asha_figure(exp, doc.out / "asha.png")
    doc.figure(
        path,
        f"ASHA: each trial's validation {md_code(exp.metric)} per epoch, coloured by how it "
        "ended, and "
        "how many epochs each trial ran",
    )
    try:
        importance = plots.importance_table(exp)
    except (ValueError, RuntimeError) as err:
        doc.text(f"Parameter importance not computed: {md_text(err)}.")
    else:
        t["importance"] = importance
        complete = sum(t.status == COMPLETED for t in exp.trials)
        doc.text(f"Importance is fitted on {importance.attrs['trials']}.")
        if complete < IMPORTANCE_MIN_COMPLETE:
            doc.text(
                f"**Caution:** {complete} of the sweep's {len(exp.trials)} trials are complete. "
                f"Under about {IMPORTANCE_MIN_COMPLETE} complete trials fANOVA's ranking is "
                "mostly noise: read it as a hint of where to search next, not as a finding."
            )
        path = plots.importance_figure(importance, exp.metric, doc.out / "importance.png")
        doc.figure(path, f"fANOVA importance of the searched parameters for {md_code(exp.metric)}")
        doc.table("importance", "Parameter importance (Optuna fANOVA)", importance)
    doc.table(
        "trials", f"All trials, best first by {md_code(exp.metric)} ({exp.mode})", t["trials"]
    )
