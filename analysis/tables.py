"""The seed study's five tables, regenerated from a sweep's test-split evaluations.

1. per balance strategy: validation accuracy, test accuracy, test precision
2. per balance strategy: per-class test accuracy
3. architectures: per-class accuracy, accuracy, precision
4. no TTA against each TTA policy, with McNemar's paired test against no TTA
5. the 134M SimpleCNN against the 10M SimpleCNN

Every table is a pandas DataFrame with numeric columns (`test_acc`, `test_acc_low`,
`test_acc_high`: fractions, bounds of the 95 % bootstrap interval) written as CSV, and a display
form with '84.5 [81.6, 87.3]' percent strings for the report. A group the sweep did not cover
stays in its table as a row whose `status` says why it has no numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd

from analysis.load import Experiment, TrialRecord
from analysis.stats import Interval, classification_intervals, mcnemar
from analysis.tta import TTAPolicy, flip_counts
from trainables.markdown import md_cell, md_code, md_text
from trainables.vocab import class_key

SIZE_MODELS = ("simple_cnn", "simple_cnn_10m")  # Table 5: the seed's 134M CNN and its 10M CNN
EVALUATED = "evaluated"


@dataclass
class Scored:
    """One model's predictions (possibly under a TTA policy) on one labelled split."""

    labels: np.ndarray
    preds: np.ndarray
    probs: np.ndarray
    classes: Sequence[str]
    seconds: float = 0.0

    @cached_property
    def intervals(self) -> dict[str, Interval]:
        return classification_intervals(self.labels, self.preds, self.classes)


@dataclass
class TrialEval:
    """The best checkpoint of one trial, evaluated on validation and test (no TTA)."""

    trial: TrialRecord
    classes: list[str]
    parameters: int
    val: Scored
    test: Scored
    tta: dict[str, tuple[TTAPolicy, Scored]] = field(default_factory=dict)
    """Policy name -> (policy, test predictions); filled for the overall best trial."""
    test_paths: list[str] = field(default_factory=list)
    """Test image paths, relative to `data_root`, in the order of `test`."""
    data_root: str = ""


def predictions_table(ev: TrialEval, policy: str) -> pd.DataFrame:
    """One row per test image: its file, true class, and the class and probabilities without
    TTA and under `policy` (what `analysis.predict` prints for the same file)."""
    base, tta = ev.tta["none"][1], ev.tta[policy][1]
    frame = pd.DataFrame({"image": ev.test_paths, "label": [ev.classes[i] for i in base.labels]})
    frame["pred"] = [ev.classes[i] for i in base.preds]
    for c, name in enumerate(ev.classes):
        frame[f"prob_{class_key(name)}"] = base.probs[:, c]
    frame["tta_policy"] = policy
    frame["tta_pred"] = [ev.classes[i] for i in tta.preds]
    for c, name in enumerate(ev.classes):
        frame[f"tta_prob_{class_key(name)}"] = tta.probs[:, c]
    return frame


def _class_keys(classes: Sequence[str]) -> list[str]:
    return [f"acc_{class_key(c)}" for c in classes]


def _metric_columns(prefix: str, scored: Scored | None, keys: Sequence[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key in keys:
        ci = scored.intervals[key] if scored is not None else Interval(np.nan, np.nan, np.nan)
        name = f"{prefix}_{key}"
        out[name], out[f"{name}_low"], out[f"{name}_high"] = ci.value, ci.low, ci.high
    return out


def _trial_columns(ev: TrialEval | None, exp: Experiment) -> dict[str, object]:
    if ev is None:
        return {
            "trial_id": None,
            "parameters": np.nan,
            "epochs": np.nan,
            "best_epoch": np.nan,
            "gpu_hours": np.nan,
        }
    return {
        "trial_id": ev.trial.trial_id,
        "parameters": ev.parameters,
        "epochs": ev.trial.epochs,
        "best_epoch": ev.trial.best_epoch,
        "gpu_hours": gpu_hours(ev.trial, exp),
    }


def trials_table(exp: Experiment) -> pd.DataFrame:
    """`Experiment.summary`, best first by the sweep's metric (trials without a score last)."""
    frame = exp.summary()
    if exp.metric not in frame:
        return frame
    order = frame.sort_values(
        [exp.metric, "trial_id"], ascending=[exp.mode == "min", True], na_position="last"
    )
    return order.reset_index(drop=True)


def gpu_hours(trial: TrialRecord, exp: Experiment) -> float:
    """Trial wall time times the GPUs it held: summary.json's per-trial `gpus` when the sweep
    wrote it, else the experiment record's `gpus_per_trial` (a number, or a dict by model). NaN when
    neither is recorded (a GPU fraction sized per trial); 0 for a CPU-only sweep."""
    recorded = exp.record.gpus_per_trial if exp.record else None
    gpus = exp.sweep_summary.get(trial.trial_id, {}).get("gpus", recorded)
    if isinstance(gpus, dict):
        gpus = gpus.get(str(trial.params.get("model")))
    if not isinstance(gpus, (int, float)):
        return float("nan")
    return trial.seconds / 3600 * float(gpus)


def _status(candidates: Sequence[TrialRecord], ev: TrialEval | None) -> str:
    if ev is not None:
        return EVALUATED
    if not candidates:
        return "missing: not in the sweep"
    return f"missing: none of {len(candidates)} trials has a usable checkpoint"


def _group_rows(
    exp: Experiment,
    key: str,
    groups: Sequence[str],
    evals: dict[str, TrialEval | None],
    metrics: dict[str, Sequence[str]],
) -> pd.DataFrame:
    rows = []
    for group in groups:
        ev = evals.get(group)
        candidates = [t for t in exp.trials if t.params.get(key) == group]
        row: dict[str, object] = {key: group, "status": _status(candidates, ev)}
        row["trials"] = len(candidates)
        other = "balance" if key == "model" else "model"  # what else the chosen trial used
        row[other] = None if ev is None else ev.trial.params.get(other)
        row.update(_trial_columns(ev, exp))
        for split, keys in metrics.items():
            scored = None if ev is None else getattr(ev, split)
            row.update(_metric_columns(split, scored, keys))
        rows.append(row)
    return pd.DataFrame(rows)


def balance_table(
    exp: Experiment, evals: dict[str, TrialEval | None], balances: Sequence[str]
) -> pd.DataFrame:
    """Table 1: the best trial of each balance strategy; val acc, test acc, test precision."""
    return _group_rows(
        exp, "balance", balances, evals, {"val": ["acc"], "test": ["acc", "precision"]}
    )


def balance_class_table(
    exp: Experiment, evals: dict[str, TrialEval | None], balances: Sequence[str], classes
) -> pd.DataFrame:
    """Table 2: per-class test accuracy of the best trial of each balance strategy."""
    return _group_rows(exp, "balance", balances, evals, {"test": _class_keys(classes)})


def architecture_table(
    exp: Experiment, evals: dict[str, TrialEval | None], models: Sequence[str], classes
) -> pd.DataFrame:
    """Table 3: the best trial of each architecture; per-class acc, acc, precision."""
    keys = [*_class_keys(classes), "acc", "precision"]
    return _group_rows(exp, "model", models, evals, {"test": keys})


def size_table(exp: Experiment, evals: dict[str, TrialEval | None], classes) -> pd.DataFrame:
    """Table 5: the seed's 134M SimpleCNN against its 10M SimpleCNN."""
    return architecture_table(exp, evals, SIZE_MODELS, classes)


def tta_table(
    best: TrialEval | None, chosen: str | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 4 (one row per policy, 'none' first) and the per-class flip counts of each policy
    against no TTA. `chosen` marks the policy selected on validation."""
    if best is None or "none" not in best.tta:
        empty = pd.DataFrame([{"policy": "none", "status": "missing: no usable trial"}])
        return empty, pd.DataFrame(columns=["policy", "class", "right_to_wrong", "wrong_to_right"])
    keys = [*_class_keys(best.classes), "acc", "precision"]
    _, base = best.tta["none"]
    rows, flips = [], []
    for name, (policy, scored) in best.tta.items():
        test = mcnemar(scored.labels, base.preds, scored.preds)
        row: dict[str, object] = {
            "policy": name,
            "status": EVALUATED,
            "views": policy.describe(),
            "merge": policy.merge,
            "cost": policy.cost,
            "chosen_on_val": name == chosen,
            "trial_id": best.trial.trial_id,
        }
        row.update(_metric_columns("test", scored, keys))
        row.update(
            {
                "right_to_wrong": test.right_to_wrong,
                "wrong_to_right": test.wrong_to_right,
                "mcnemar_p": test.pvalue if name != "none" else np.nan,
                "verdict": test.verdict() if name != "none" else "baseline",
                "seconds": scored.seconds,
            }
        )
        rows.append(row)
        if name != "none":
            per_class = flip_counts(scored.labels, base.preds, scored.preds, best.classes)
            per_class.insert(0, "policy", name)
            flips.append(per_class)
    flip_table = pd.concat(flips, ignore_index=True) if flips else pd.DataFrame()
    return pd.DataFrame(rows), flip_table


# --- display --------------------------------------------------------------------------------

_LABELS = {
    "val_acc": "val acc (%)",
    "test_acc": "test acc (%)",
    "test_precision": "test precision (%)",
    "parameters": "parameters",
    "epochs": "epochs",
    "best_epoch": "best epoch",
    "gpu_hours": "GPU-hours",
    "cost": "passes / image",
    "mcnemar_p": "McNemar p",
    "chosen_on_val": "chosen on val",
    "right_to_wrong": "right → wrong",
    "wrong_to_right": "wrong → right",
    "trial_id": "trial",
}


def display(table: pd.DataFrame) -> pd.DataFrame:
    """The table as strings for a report: metrics as 'value [low, high]' percent, counts with
    thousands separators, missing values as '—'."""
    out = pd.DataFrame(index=table.index)
    for col in table.columns:
        if col.endswith(("_low", "_high")):
            continue
        if f"{col}_low" in table:
            label = _LABELS.get(col) or f"{col.split('_acc_')[-1].upper()} (%)"
            out[label] = [
                Interval(v, lo, hi).format() if pd.notna(v) else "—"
                for v, lo, hi in zip(
                    table[col], table[f"{col}_low"], table[f"{col}_high"], strict=True
                )
            ]
        else:
            label = _LABELS.get(col, f"{col} (%)" if _is_fraction(col) else col)
            out[label] = [_cell(col, v) for v in table[col]]
    return out


def _is_fraction(col: str) -> bool:
    """Accuracy-like columns (fractions in [0, 1]) that the report shows as percent."""
    return col.endswith(("_acc", "_precision", "_recall", "_f1")) or "_acc_" in col


def _cell(col: str, value: object) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "—"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else ""
    if col == "parameters":
        return f"{int(value):,}"
    if col in ("epochs", "best_epoch", "cost", "right_to_wrong", "wrong_to_right"):
        return str(int(value))
    if col == "gpu_hours":
        return f"{float(value):.3g}"
    if col == "mcnemar_p":
        return f"{float(value):.3g}"
    if col == "seconds":
        return f"{float(value):.1f}"
    if _is_fraction(col):
        return f"{100 * float(value):.1f}"  # a fraction shown as percent, like the CI columns
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def compact(shown: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """A display table made to fit a page: rows without numbers (`status` not 'evaluated') and
    descriptive columns with one value in every row (never a result column: metrics, flips,
    tests) leave the table for notes under it, and the percent
    columns (test first) follow the first (key) column. Returns the table and the notes."""
    notes: list[str] = []
    frame = shown
    if "status" in frame and len(frame) > 1:
        gone = frame[frame["status"] != EVALUATED]
        if 0 < len(gone) < len(frame):
            key = frame.columns[0]
            pairs = zip(gone[key], gone["status"], strict=True)
            listed = "; ".join(f"{md_code(k)} ({md_text(s)})" for k, s in pairs)
            notes.append(f"No numbers for {listed}.")
            frame = frame[frame["status"] == EVALUATED]
    if "status" in frame and (frame["status"] == EVALUATED).all():
        frame = frame.drop(columns="status")
    if len(frame) > 1:
        constant = [
            c
            for c in frame.columns[1:]
            if frame[c].nunique(dropna=False) == 1 and not _is_result(str(c))
        ]
        if constant:
            same = ", ".join(f"{md_text(c)} {md_text(frame[c].iloc[0])}" for c in constant)
            notes.append(f"Same in every row: {same}.")
            frame = frame.drop(columns=constant)
    percent = [c for c in frame.columns[1:] if str(c).endswith("(%)")]
    tests = [c for c in percent if str(c).startswith("test")]
    first = [frame.columns[0], *tests, *[c for c in percent if c not in tests]]
    frame = frame[first + [c for c in frame.columns if c not in first]]
    return frame.reset_index(drop=True), notes


# Display columns that are results even when every row has the same value (a tie is a finding).
_RESULT_LABELS = {"right → wrong", "wrong → right", "net", "McNemar p", "verdict", "importance"}


def _is_result(label: str) -> bool:
    return label.endswith("(%)") or label in _RESULT_LABELS or label.startswith(("val_", "test_"))


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of a display table (no tabulate needed); every header
    and cell through `md_cell`, so a name from the data keeps the table's shape."""
    header = [md_cell(c) for c in table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(md_cell(v) for v in row.tolist()) + " |")
    return "\n".join(lines)
