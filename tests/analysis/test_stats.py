"""Bootstrap intervals and McNemar's test, checked against scikit-learn and scipy by hand."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

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
    # Tables print 'x [lo, hi]'; x outside [lo, hi] would be a contradiction on the page.
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
