"""Uncertainty for the study's numbers: bootstrap confidence intervals and McNemar's paired test.

The seed reports single test accuracies (84.5 % against 87.8 %) on ~600 images without any
interval, so a 3-point gap could be noise. Every accuracy here carries a seeded 95 % percentile
bootstrap interval, and every TTA-against-no-TTA comparison carries McNemar's exact test on the
images the two disagree about.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest

from trainables.vocab import class_key

ALPHA = 0.05  # significance level of the paired tests; CIs are (1 - ALPHA) = 95 %
N_RESAMPLES = 2000  # bootstrap resamples; ~0.1 s for 600 test images
_MAX_CELLS = 20_000_000  # resamples x images held in memory at once (int64 = 160 MB)


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap confidence interval, all as fractions in [0, 1]."""

    value: float
    low: float
    high: float

    def format(self, percent: bool = True, digits: int = 1) -> str:
        """'84.5 [81.6, 87.3]' (percent) or '0.845 [0.816, 0.873]'."""
        if np.isnan(self.value):
            return "n/a"
        scale, d = (100.0, digits) if percent else (1.0, digits + 2)
        return f"{self.value * scale:.{d}f} [{self.low * scale:.{d}f}, {self.high * scale:.{d}f}]"


@dataclass(frozen=True)
class McNemar:
    """Exact McNemar test of two classifiers on the same images.

    `right_to_wrong`: images the baseline got right and the other got wrong; `wrong_to_right` the
    reverse. Only these discordant images carry information; under the null hypothesis each is a
    fair coin, so the p-value is a two-sided binomial test of `wrong_to_right` out of both.
    """

    right_to_wrong: int
    wrong_to_right: int
    pvalue: float

    @property
    def significant(self) -> bool:
        return self.pvalue < ALPHA

    def verdict(self, better: str = "better", worse: str = "worse") -> str:
        """A plain sentence fragment, e.g. 'within noise (p = 0.42)' or 'better (p = 0.003)'."""
        p = f"p = {self.pvalue:.3g}"
        if not self.significant:
            return f"within noise ({p})"
        return f"{better if self.wrong_to_right > self.right_to_wrong else worse} ({p})"


def _as_labels(y: Sequence[int] | np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(y).ravel()
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def _check_pair(y_true: np.ndarray, y_pred: np.ndarray) -> None:
    if len(y_true) != len(y_pred) or len(y_true) == 0:
        raise ValueError(
            f"y_true and y_pred must be non-empty and equally long, got {len(y_true)} and "
            f"{len(y_pred)}"
        )


def _confusions(
    y_true: np.ndarray, y_pred: np.ndarray, num_classes: int, n_resamples: int, seed: int
) -> np.ndarray:
    """Confusion matrices (n_resamples, K, K) of resamples (with replacement) of the pairs."""
    rng = np.random.default_rng(seed)
    n, k2 = len(y_true), num_classes * num_classes
    codes = y_true * num_classes + y_pred  # one integer per (true, pred) cell
    out = np.empty((n_resamples, k2), dtype=np.int64)
    chunk = max(1, _MAX_CELLS // n)
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        # Offsetting each resample's codes by its row lets one bincount count every matrix.
        offset = np.arange(stop - start)[:, None] * k2
        counts = np.bincount((codes[idx] + offset).ravel(), minlength=(stop - start) * k2)
        out[start:stop] = counts.reshape(stop - start, k2)
    return out.reshape(n_resamples, num_classes, num_classes)


def _metrics_from_confusions(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, macro precision and per-class accuracy (recall) from (..., K, K) matrices.

    Macro precision counts a class nobody predicted as 0 (scikit-learn's zero_division=0 with all
    labels given, as `trainables.metrics` computes it); a class absent from y_true has NaN accuracy.
    """
    diag = np.diagonal(cm, axis1=-2, axis2=-1).astype(np.float64)
    total = cm.sum(axis=(-2, -1))
    predicted = cm.sum(axis=-2)
    actual = cm.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, diag / np.maximum(predicted, 1), 0.0).mean(axis=-1)
        recall = np.where(actual > 0, diag / np.maximum(actual, 1), np.nan)
    out = {"acc": diag.sum(axis=-1) / total, "precision": precision}
    for c in range(cm.shape[-1]):
        out[f"acc_{c}"] = recall[..., c]
    return out


def _interval(point: float, samples: np.ndarray, confidence: float) -> Interval:
    samples = samples[~np.isnan(samples)]
    if np.isnan(point) or samples.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(samples, [tail, 100.0 - tail])
    # The plain percentile interval, not widened to reach the point estimate: a biased statistic
    # (macro precision on a small class) can put its estimate off the interval's centre, and
    # hiding that would also make the interval's coverage other than its label.
    return Interval(float(point), float(low), float(high))


def classification_intervals(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    classes: Sequence[str],
    *,
    confidence: float = 1.0 - ALPHA,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> dict[str, Interval]:
    """Seeded percentile-bootstrap intervals over images for the seed's metrics.

    Keys: `acc`, `precision` (macro) and `acc_<class>` (per-class accuracy = recall, lower-case
    class names as in `trainables.metrics`). Per-class intervals come from the same resamples of
    the whole test set, so a small class gets the wide interval it deserves.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples!r}")
    y_true, y_pred = _as_labels(y_true, "y_true"), _as_labels(y_pred, "y_pred")
    _check_pair(y_true, y_pred)
    k = len(classes)
    bad = sorted(set(np.concatenate([y_true, y_pred]).tolist()) - set(range(k)))
    if bad:
        raise ValueError(f"labels {bad} are outside 0..{k - 1} for classes {list(classes)}")
    point_cm = np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)
    points = _metrics_from_confusions(point_cm)
    samples = _metrics_from_confusions(_confusions(y_true, y_pred, k, n_resamples, seed))
    intervals = {}
    for key, point in points.items():
        name = key
        if key.startswith("acc_"):
            name = f"acc_{class_key(classes[int(key[4:])])}"
        intervals[name] = _interval(float(point), samples[key], confidence)
    return intervals


def accuracy_interval(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    *,
    confidence: float = 1.0 - ALPHA,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> Interval:
    """Bootstrap interval of plain accuracy (any number of classes)."""
    y_true, y_pred = _as_labels(y_true, "y_true"), _as_labels(y_pred, "y_pred")
    _check_pair(y_true, y_pred)
    correct = (y_true == y_pred).astype(np.float64)
    return _accuracy_only(correct, confidence, n_resamples, seed)


def _accuracy_only(correct: np.ndarray, confidence: float, n_resamples: int, seed: int) -> Interval:
    rng = np.random.default_rng(seed)
    n = len(correct)
    means = np.empty(n_resamples)
    chunk = max(1, _MAX_CELLS // n)
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        means[start:stop] = correct[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    return _interval(float(correct.mean()), means, confidence)


def mcnemar(
    y_true: Sequence[int] | np.ndarray,
    base_pred: Sequence[int] | np.ndarray,
    other_pred: Sequence[int] | np.ndarray,
) -> McNemar:
    """Exact (binomial) McNemar test of `other_pred` against `base_pred` on the same images."""
    y_true = _as_labels(y_true, "y_true")
    base_pred, other_pred = _as_labels(base_pred, "base_pred"), _as_labels(other_pred, "other_pred")
    _check_pair(y_true, base_pred)
    _check_pair(y_true, other_pred)
    base_ok, other_ok = base_pred == y_true, other_pred == y_true
    right_to_wrong = int(np.sum(base_ok & ~other_ok))
    wrong_to_right = int(np.sum(~base_ok & other_ok))
    discordant = right_to_wrong + wrong_to_right
    # No disagreement at all is no evidence of a difference.
    pvalue = 1.0 if discordant == 0 else binomtest(wrong_to_right, discordant, 0.5).pvalue
    return McNemar(right_to_wrong, wrong_to_right, float(pvalue))
