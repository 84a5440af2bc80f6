"""Classification metrics as the seed reports them, computed by scikit-learn."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    precision_recall_fscore_support,
)

from trainables.vocab import class_key


def classification_metrics(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    classes: Sequence[str],
    prefix: str,
) -> dict[str, float]:
    """`{prefix}_acc`, macro `_precision` / `_recall` / `_f1` (the seed's score is precision),
    `_balanced_acc` and `_acc_<class_key(class)>` (per-class recall, the seed's per-class accuracy).

    Labels are fixed to range(len(classes)), so a class absent from a batch keeps its slot; its
    per-class accuracy is 0 when it has no true samples.
    """
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.int64).ravel()
    if len(y_true) != len(y_pred) or len(y_true) == 0:
        raise ValueError(
            f"y_true and y_pred must be non-empty and equally long, got {len(y_true)} and "
            f"{len(y_pred)}"
        )
    labels = np.arange(len(classes))
    out_of_range = sorted(set(np.concatenate([y_true, y_pred]).tolist()) - set(labels.tolist()))
    if out_of_range:
        raise ValueError(f"labels {out_of_range} are outside 0..{len(classes) - 1} for {classes}")
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average="macro", zero_division=0
    )
    per_class_recall = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0
    )[1]
    metrics = {
        f"{prefix}_acc": accuracy_score(y_true, y_pred),
        f"{prefix}_precision": precision,
        f"{prefix}_recall": recall,
        f"{prefix}_f1": f1,
        f"{prefix}_balanced_acc": _balanced_accuracy(y_true, y_pred),
    }
    for name, value in zip(classes, per_class_recall, strict=True):
        metrics[f"{prefix}_acc_{class_key(name)}"] = value
    return {k: float(v) for k, v in metrics.items()}


def _balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean recall over the classes present in y_true (scikit-learn's definition). scikit-learn
    warns when y_pred holds a class y_true lacks, which is normal for a small validation set."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        return float(balanced_accuracy_score(y_true, y_pred))
