"""Bootstrap intervals and McNemar's test, checked against scikit-learn and scipy by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest, bootstrap, norm
from sklearn.metrics import precision_score

from analysis.stats import (
    Interval,
    accuracy_interval,
    classification_intervals,
    mcnemar,
)
from trainables.metrics import classification_metrics

CLASSES = ("NORMAL", "BACTERIA", "VIRAL")


def _predictions(n: int = 300, accuracy: float = 0.8, seed: int = 1):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 3, size=n)
    wrong = rng.random(n) > accuracy
    y_pred = np.where(wrong, (y_true + rng.integers(1, 3, size=n)) % 3, y_true)
    return y_true, y_pred


@pytest.mark.parametrize("accuracy", [0.5, 0.8, 0.97, 1.0])
def test_every_interval_contains_its_point_estimate(accuracy):
    y_true, y_pred = _predictions(accuracy=accuracy)
    intervals = classification_intervals(y_true, y_pred, CLASSES, n_resamples=500)
    # The intervals are no longer widened to reach their estimate, so this can fail: for these
    # near-symmetric statistics the estimate must lie inside its own percentile interval.
    for key, ci in intervals.items():
        assert ci.low <= ci.value <= ci.high, key
    ci = accuracy_interval(y_true, y_pred, n_resamples=500)
    assert ci.low <= ci.value <= ci.high


def test_point_estimates_match_scikit_learn_metrics():
    y_true, y_pred = _predictions()
    intervals = classification_intervals(y_true, y_pred, CLASSES, n_resamples=200)
    expected = classification_metrics(y_true, y_pred, CLASSES, "test")
    # The bootstrap's own metric code must agree with the metric the trainables report.
    for key in ("acc", "precision", "acc_normal", "acc_bacteria", "acc_viral"):
        assert intervals[key].value == pytest.approx(expected[f"test_{key}"], abs=1e-12), key


def test_interval_is_seeded_and_narrows_with_more_images():
    y_true, y_pred = _predictions(n=200)
    a = accuracy_interval(y_true, y_pred, seed=3)
    b = accuracy_interval(y_true, y_pred, seed=3)
    # Same seed, same interval: reports are reproducible.
    assert a == b
    big_true, big_pred = np.tile(y_true, 16), np.tile(y_pred, 16)
    wide, narrow = a, accuracy_interval(big_true, big_pred, seed=3)
    # 16x the images should shrink the interval about 4x; at least 2x protects the resampling.
    assert (narrow.high - narrow.low) * 2 < wide.high - wide.low
    # A 95 % interval of ~200 binary outcomes at 0.8 is roughly +-5.5 points.
    assert 0.06 < wide.high - wide.low < 0.16


def test_class_absent_from_labels_has_no_interval():
    y_true = np.array([0, 0, 1, 1])
    y_pred = np.array([0, 1, 1, 1])
    intervals = classification_intervals(y_true, y_pred, CLASSES, n_resamples=50)
    # No VIRAL images: its accuracy is undefined, shown as n/a rather than a fake 0.
    assert np.isnan(intervals["acc_viral"].value)
    assert intervals["acc_viral"].format() == "n/a"


def test_interval_format_is_percent_with_bounds():
    assert Interval(0.845, 0.8161, 0.873).format() == "84.5 [81.6, 87.3]"


def test_bad_inputs_are_refused_with_a_message():
    with pytest.raises(ValueError, match="equally long"):
        classification_intervals([0, 1], [0], CLASSES)
    with pytest.raises(ValueError, match="outside 0..2"):
        classification_intervals([0, 3], [0, 1], CLASSES)
    with pytest.raises(ValueError, match="confidence"):
        classification_intervals([0], [0], CLASSES, confidence=95)


def test_mcnemar_counts_discordant_pairs_and_uses_exact_binomial():
    y_true = np.zeros(40, dtype=int)
    base = np.array([0] * 20 + [1] * 20)
    # TTA fixes 12 of the 20 base errors and breaks 2 of the 20 base successes.
    other = base.copy()
    other[20:32] = 0
    other[:2] = 1
    result = mcnemar(y_true, base, other)
    assert (result.right_to_wrong, result.wrong_to_right) == (2, 12)
    # The exact two-sided test on the 14 discordant images, nothing else.
    assert result.pvalue == pytest.approx(binomtest(12, 14, 0.5).pvalue)
    assert result.significant and result.verdict().startswith("better")


def test_mcnemar_calls_small_differences_within_noise():
    y_true = np.zeros(10, dtype=int)
    base = np.array([0] * 7 + [1] * 3)
    other = np.array([0] * 8 + [1] * 2)
    result = mcnemar(y_true, base, other)
    # One image of difference cannot be told from chance, and the report must say so plainly.
    assert not result.significant
    assert result.verdict().startswith("within noise")
    # Identical predictions: no evidence at all, p = 1.
    assert mcnemar(y_true, base, base).pvalue == 1.0


def _exactly(n: int, accuracy: float) -> tuple[np.ndarray, np.ndarray]:
    """n predictions of which exactly round(n * accuracy) are right (binary labels)."""
    y_true = np.zeros(n, dtype=int)
    y_pred = np.ones(n, dtype=int)
    y_pred[: round(n * accuracy)] = 0
    return y_true, y_pred


def _normal_interval(p: float, n: int, confidence: float) -> tuple[float, float]:
    """Wald interval p +- z * sqrt(p (1 - p) / n), computed without the bootstrap."""
    half = norm.ppf(0.5 + confidence / 2) * math.sqrt(p * (1 - p) / n)
    return p - half, p + half


# One resampled accuracy moves in steps of 1/200 = 0.005; the 90 % bounds lie 0.009 inside the
# 95 % ones (1.645 against 1.960 standard errors of 0.0283), so a tolerance of 0.005 passes a
# true 95 % bootstrap interval and fails a 90 % one.
NORMAL_TOLERANCE = 0.005


@pytest.mark.parametrize(("confidence", "labelled_95"), [(0.95, True), (0.90, False)])
def test_accuracy_interval_matches_the_normal_approximation_at_n200_p08(confidence, labelled_95):
    y_true, y_pred = _exactly(200, 0.8)
    ci = accuracy_interval(y_true, y_pred, confidence=confidence, n_resamples=4000)
    low, high = _normal_interval(0.8, 200, 0.95)
    matches_95 = bool(
        abs(ci.low - low) <= NORMAL_TOLERANCE and abs(ci.high - high) <= NORMAL_TOLERANCE
    )
    # The 95 % interval agrees with the textbook one; a 90 % interval labelled 95 % would not.
    assert matches_95 is labelled_95, (confidence, ci, (low, high))


def test_accuracy_bounds_equal_scipy_bootstrap_on_the_same_resamples():
    y_true, y_pred = _predictions(n=200)
    correct = (y_true == y_pred).astype(float)
    for confidence in (0.95, 0.90):
        ci = accuracy_interval(y_true, y_pred, confidence=confidence, seed=7)
        ref = bootstrap(
            (correct,),
            np.mean,
            n_resamples=2000,
            confidence_level=confidence,
            method="percentile",
            rng=np.random.default_rng(7),
        ).confidence_interval
        # Same seed, same resamples, independent percentile code: equal to float precision.
        assert (ci.low, ci.high) == pytest.approx((ref.low, ref.high), abs=1e-12), confidence
    wide = accuracy_interval(y_true, y_pred, confidence=0.95, seed=7)
    narrow = accuracy_interval(y_true, y_pred, confidence=0.90, seed=7)
    assert narrow.high - narrow.low < wide.high - wide.low - 0.01  # the level really matters


def test_macro_precision_bounds_equal_scipy_bootstrap_of_scikit_learn():
    y_true, y_pred = _predictions(n=150, accuracy=0.7)
    intervals = classification_intervals(y_true, y_pred, CLASSES, n_resamples=100, seed=2)

    def macro_precision(t: np.ndarray, p: np.ndarray) -> float:
        return precision_score(t, p, labels=[0, 1, 2], average="macro", zero_division=0)

    ref = bootstrap(
        (y_true, y_pred),
        macro_precision,
        n_resamples=100,
        paired=True,
        vectorized=False,
        method="percentile",
        rng=np.random.default_rng(2),
    ).confidence_interval
    # Paired resampling of (true, predicted) pairs, scored by scikit-learn: the same interval.
    got = intervals["precision"]
    assert (got.low, got.high) == pytest.approx((ref.low, ref.high), abs=1e-12)
