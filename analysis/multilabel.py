"""The report of a multi-label sweep: per-finding test AUROC with 95 % intervals, a paired
comparison of the two best models, and confusion counts at thresholds chosen on validation.

Intervals are percentile bootstraps over patients (seeded): each resample draws patients with
replacement and keeps all of a drawn patient's images, since one patient's images are not
independent. The paired comparison draws the same patients for both models. A finding whose
test labels hold one class has no AUROC: it is left out of the mean and the table says so.

Not run for multi-label models, each said in the report: TTA (its merge rules average softmax
views of one class per image), temperature calibration (a softmax temperature; the model's
sigmoid outputs get per-finding thresholds instead) and the perturbation audit (it counts
class flips).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from trainables.multilabel import (
    NEGATIVE,
    POSITIVE,
    UNCERTAIN,
    UNMENTIONED,
    finding_scores,
    youden_thresholds,
)

if TYPE_CHECKING:
    from analysis.document import Document
    from analysis.load import Experiment, TrialRecord

N_RESAMPLES = 1000
SEED = 0
CONFIDENCE = 0.95
NOT_RUN = (
    "TTA, temperature calibration and the perturbation audit are not run for multi-label "
    "models: TTA merges and the temperature act on a softmax over one class per image, and "
    "the audit counts class flips; predictions use sigmoid(logits) and the per-finding "
    "thresholds chosen on validation."
)


def patient_resamples(
    patients: Sequence[str], n_resamples: int = N_RESAMPLES, seed: int = SEED
) -> list[np.ndarray]:
    """Image indices of each bootstrap resample: patients drawn with replacement, each drawn
    patient's images kept together."""
    ids, inverse = np.unique(np.asarray(patients, dtype=object).astype(str), return_inverse=True)
    by_patient = [np.flatnonzero(inverse == k) for k in range(len(ids))]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_resamples):
        drawn = rng.integers(len(ids), size=len(ids))
        out.append(np.concatenate([by_patient[k] for k in drawn]))
    return out


def _mean(aurocs: np.ndarray) -> float:
    finite = aurocs[~np.isnan(aurocs)]
    return float(finite.mean()) if len(finite) else float("nan")


def _bounds(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = 100 * (1 - confidence) / 2
    finite = samples[~np.isnan(samples)]
    if not len(finite):
        return float("nan"), float("nan")
    return float(np.percentile(finite, tail)), float(np.percentile(finite, 100 - tail))


def auroc_intervals(
    codes: np.ndarray,
    probs: np.ndarray,
    patients: Sequence[str],
    findings: Sequence[str],
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    confidence: float = CONFIDENCE,
) -> pd.DataFrame:
    """One row per finding and a `mean` row: AUROC, its interval, AP, positives, negatives.
    Resamples where a finding has one class are skipped for that finding."""
    point, ap = finding_scores(codes, probs)
    samples = np.array(
        [
            finding_scores(codes[i], probs[i], ap=False)[0]
            for i in patient_resamples(patients, n_resamples, seed)
        ]
    )
    means = np.array([_mean(s) for s in samples])
    rows = []
    for j, f in enumerate(findings):
        low, high = _bounds(samples[:, j], confidence)
        rows.append(
            {
                "finding": f,
                "auroc": point[j],
                "auroc_low": low,
                "auroc_high": high,
                "ap": ap[j],
                "positives": int((codes[:, j] == POSITIVE).sum()),
                "negatives": int(np.isin(codes[:, j], (NEGATIVE, UNMENTIONED)).sum()),
                "note": "" if point[j] == point[j] else "one class in test: no AUROC",
            }
        )
    low, high = _bounds(means, confidence)
    rows.append(
        {
            "finding": "mean",
            "auroc": _mean(point),
            "auroc_low": low,
            "auroc_high": high,
            "ap": _mean(ap),
            "note": "over findings with both classes",
        }
    )
    return pd.DataFrame(rows)


def paired_comparison(
    codes: np.ndarray,
    probs_a: np.ndarray,
    probs_b: np.ndarray,
    patients: Sequence[str],
    findings: Sequence[str],
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    confidence: float = CONFIDENCE,
) -> pd.DataFrame:
    """AUROC of A minus B per finding and for the mean, with a paired bootstrap interval (the
    same patients for both) and a two-sided bootstrap p-value (twice the smaller tail share)."""
    a, b = finding_scores(codes, probs_a)[0], finding_scores(codes, probs_b)[0]
    diffs = []
    for idx in patient_resamples(patients, n_resamples, seed):
        sa, sb = (
            finding_scores(codes[idx], probs_a[idx], ap=False)[0],
            finding_scores(codes[idx], probs_b[idx], ap=False)[0],
        )
        diffs.append([*(sa - sb), _mean(sa) - _mean(sb)])
    diffs = np.array(diffs)
    rows = []
    for j, name in enumerate([*findings, "mean"]):
        pa, pb = (a[j], b[j]) if j < len(findings) else (_mean(a), _mean(b))
        d = diffs[:, j][~np.isnan(diffs[:, j])]
        low, high = _bounds(d, confidence)
        p = min(1.0, 2 * min((d <= 0).mean(), (d >= 0).mean())) if len(d) else float("nan")
        rows.append(
            {
                "finding": name,
                "auroc_a": pa,
                "auroc_b": pb,
                "difference": pa - pb,
                "low": low,
                "high": high,
                "p_bootstrap": p,
            }
        )
    return pd.DataFrame(rows)


def confusion_counts(
    codes: np.ndarray, probs: np.ndarray, thresholds: Sequence[float], findings: Sequence[str]
) -> pd.DataFrame:
    """Per finding at its validation threshold: TP, FP, FN, TN over the counted test labels
    (uncertain ones left out), sensitivity and specificity."""
    rows = []
    for j, f in enumerate(findings):
        counted = codes[:, j] != UNCERTAIN
        y, pred = codes[counted, j] == POSITIVE, probs[counted, j] >= thresholds[j]
        tp, fp = int((y & pred).sum()), int((~y & pred).sum())
        fn, tn = int((y & ~pred).sum()), int((~y & ~pred).sum())
        rows.append(
            {
                "finding": f,
                "threshold": thresholds[j],
                "TP": tp,
                "FP": fp,
                "FN": fn,
                "TN": tn,
                "sensitivity": tp / max(tp + fn, 1),
                "specificity": tn / max(tn + fp, 1),
            }
        )
    return pd.DataFrame(rows)


def record_in_bundle(exp: Experiment, t: dict[str, pd.DataFrame], report_dir: Path) -> str:
    """Write the per-finding test AUROC (95 % intervals) into the exported bundle's
    `evaluation` when it holds the report's best trial; returns what was done."""
    from trainables.bundle import read_bundle_meta, update_bundle_meta
    from trainables.experiment import EXPORT_DIR

    bundle_dir = exp.path / EXPORT_DIR
    try:
        meta = read_bundle_meta(bundle_dir)
    except ValueError:
        return f"no bundle at {bundle_dir} to record the test AUROC in"
    best = exp.ranked()[0].trial_id
    if meta.get("source", {}).get("trial_id") != best:
        return f"bundle {bundle_dir} holds another trial than the report's best ({best}); unchanged"
    rows = t["ml_auroc"].replace({np.nan: None}).to_dict("records")
    metrics = [
        {
            "metric": f"auroc_{r['finding']}",
            "tta": "none",
            "value": r["auroc"],
            "low": r["auroc_low"],
            "high": r["auroc_high"],
        }
        for r in rows
    ]
    update_bundle_meta(
        bundle_dir,
        {
            "evaluation": {
                "split": "test",
                "interval": "95 % percentile bootstrap over patients",
                "report": str(report_dir / "report.html"),
                "metrics": metrics,
            }
        },
    )
    return f"recorded the per-finding test AUROC in {bundle_dir}"


def is_multilabel(trial: TrialRecord) -> bool:
    """Whether the trial's best checkpoint is a multi-label model."""
    from trainables.train import load_checkpoint

    return bool(load_checkpoint(trial.best_checkpoint).get("multilabel", False))


def _predictions(trial: TrialRecord, device: str) -> dict[str, Any]:
    """Sigmoid probabilities of the trial's best checkpoint on validation and test."""
    from trainables.data import load_for_config
    from trainables.train import model_from_checkpoint, predict_proba

    model, cfg, classes = model_from_checkpoint(trial.best_checkpoint)
    data = load_for_config(cfg, include_test=True)
    if data.test is None or list(data.classes) != list(classes):
        raise ValueError(f"trial {trial.trial_id}: the data's test split or findings changed")
    model.to(device)
    val = predict_proba(model, data.val.images, device, cfg=cfg, multilabel=True).numpy()
    test = predict_proba(model, data.test.images, device, cfg=cfg, multilabel=True).numpy()
    return {"cfg": cfg, "classes": classes, "data": data, "val": val, "test": test}


def multilabel_report(
    exp: Experiment, out: Path, device: str, n_resamples: int = N_RESAMPLES
) -> tuple[Document, dict[str, pd.DataFrame]]:
    """The multi-label report: per-finding AUROC with intervals, paired comparison of the two
    best trials, confusion counts at validation thresholds, the trials table."""
    from analysis import tables
    from analysis.document import Document

    ranked = exp.ranked()
    best = _predictions(ranked[0], device)
    data, findings = best["data"], best["classes"]
    codes, patients = data.test.labels.numpy(), data.test.patients
    thresholds = youden_thresholds(data.val.labels.numpy(), best["val"])
    t = {
        "ml_auroc": auroc_intervals(codes, best["test"], patients, findings, n_resamples),
        "ml_confusion": confusion_counts(codes, best["test"], thresholds, findings),
        "trials": tables.trials_table(exp),
    }
    doc = Document(out)
    doc.heading(f"Multi-label results: {exp.name}", 1)
    doc.text(
        f"Best trial {ranked[0].trial_id} by {exp.metric} ({exp.mode}); {len(findings)} findings, "
        f"uncertainty policy `{best['cfg'].uncertainty}`, {len(codes)} test images of "
        f"{len(set(patients))} patients. Intervals: 95 % percentile bootstrap over patients "
        f"({n_resamples} resamples, seed {SEED})."
    )
    doc.table("ml_auroc", "Per-finding test AUROC with 95 % intervals", t["ml_auroc"])
    if len(ranked) > 1:
        second = _predictions(ranked[1], device)
        t["ml_paired"] = paired_comparison(
            codes, best["test"], second["test"], patients, findings, n_resamples
        )
        doc.table(
            "ml_paired",
            f"Paired comparison: {ranked[0].trial_id} (A) minus {ranked[1].trial_id} (B), test "
            "AUROC, the same patients resampled for both",
            t["ml_paired"],
        )
    doc.table(
        "ml_confusion",
        "Test confusion counts at per-finding thresholds chosen on validation (Youden's J)",
        t["ml_confusion"],
    )
    doc.text(NOT_RUN)
    doc.table("trials", "Every trial of the sweep", t["trials"])
    return doc, t
