"""ECE and temperature scaling against hand-made examples and independent computations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.calibration import calibration_curve
from sklearn.metrics import log_loss

from trainables.calibration import (
    ECE_BINS,
    calibrate,
    expected_calibration_error,
    fit_temperature,
    nll,
    reliability_bins,
    scaled_probs,
)


def _probs(top: float, n: int, right: int) -> tuple[np.ndarray, np.ndarray]:
    """n three-class rows with top probability `top` on class 0; `right` of them labelled 0."""
    rest = (1 - top) / 2
    probs = np.tile([top, rest, rest], (n, 1))
    labels = np.array([0] * right + [1] * (n - right))
    return probs, labels


def test_ece_of_a_hand_made_example():
    # 10 images at confidence 0.9 with 8 right (gap 0.1) and 10 at 0.6 with 3 right (gap 0.3):
    # ECE = (10 * 0.1 + 10 * 0.3) / 20 = 0.2 with any binning that separates 0.6 from 0.9.
    a, ya = _probs(0.9, 10, 8)
    b, yb = _probs(0.6, 10, 3)
    probs, labels = np.vstack([a, b]), np.concatenate([ya, yb])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.2, abs=1e-12)
    # Both groups in one bin: |(8 + 3) / 20 - 0.75| = 0.2 as well.
    assert expected_calibration_error(probs, labels, bins=1) == pytest.approx(0.2, abs=1e-12)
    # A perfectly calibrated group has ECE 0.
    c, yc = _probs(0.8, 10, 8)
    assert expected_calibration_error(c, yc) == pytest.approx(0.0, abs=1e-12)


def test_reliability_bins_match_sklearn_calibration_curve():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, size=(500, 3))
    probs = softmax(logits, axis=1)
    labels = rng.integers(0, 3, size=500)
    table = reliability_bins(probs, labels)
    right = (probs.argmax(axis=1) == labels).astype(int)
    # sklearn bins the top probability into the same 15 uniform bins on [0, 1].
    acc, conf = calibration_curve(right, probs.max(axis=1), n_bins=ECE_BINS, strategy="uniform")
    full = table["count"] > 0
    np.testing.assert_allclose(table["accuracy"][full], acc, atol=1e-12)
    np.testing.assert_allclose(table["confidence"][full], conf, atol=1e-12)
    # ECE recomputed from sklearn's bins and numpy's own histogram of the confidences.
    counts = np.histogram(probs.max(axis=1), bins=np.linspace(0, 1, ECE_BINS + 1))[0]
    expected = np.sum(counts[counts > 0] * np.abs(acc - conf)) / len(labels)
    assert expected_calibration_error(probs, labels) == pytest.approx(expected, abs=1e-12)


def test_fitted_temperature_recovers_the_temperature_labels_were_drawn_with():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, size=(20_000, 3))
    true_t = 2.5
    # Labels drawn from softmax(logits / 2.5): the logits are over-confident by a factor 2.5.
    p = softmax(logits / true_t, axis=1)
    labels = (rng.random((len(p), 1)) < p.cumsum(axis=1)).argmax(axis=1)
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(true_t, rel=0.05)
    # The minimiser really is the NLL's minimum: a fine grid finds nothing lower.
    grid = np.linspace(1.0, 4.0, 301)
    best = grid[np.argmin([nll(logits, labels, g) for g in grid])]
    assert t == pytest.approx(best, abs=0.011)
    # nll agrees with scikit-learn's log loss.
    assert nll(logits, labels, t) == pytest.approx(
        log_loss(labels, scaled_probs(logits, t), labels=[0, 1, 2]), rel=1e-9
    )


def test_calibrate_lowers_ece_and_nll_and_never_changes_a_prediction():
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 3, size=(3000, 3))
    p = softmax(logits / 3.0, axis=1)
    labels = (rng.random((len(p), 1)) < p.cumsum(axis=1)).argmax(axis=1)
    record = calibrate(logits, labels)
    assert record["fitted_on"] == "val" and record["images"] == 3000
    assert record["ece_after"] < record["ece_before"] / 2
    assert record["nll_after"] < record["nll_before"]
    scaled = scaled_probs(logits, record["temperature"])
    assert (scaled.argmax(axis=1) == logits.argmax(axis=1)).all()
    # Over-confident by a factor 3: held-out images gain from T, so it is applied.
    assert record["applied"] and record["temperature"] == record["fitted_temperature"]
    assert record["cross_fitted_ece_after"] < record["cross_fitted_ece_before"]


def test_a_temperature_that_does_not_help_held_out_images_is_not_applied():
    rng = np.random.default_rng(5)
    # Already calibrated: labels drawn from softmax(logits), so T = 1 is right and any fitted T
    # only chases noise. Judged on the fold it did not see, it must not be applied.
    logits = rng.normal(0, 2, size=(400, 3))
    p = softmax(logits, axis=1)
    labels = (rng.random((len(p), 1)) < p.cumsum(axis=1)).argmax(axis=1)
    record = calibrate(logits, labels)
    # The held-out judgement, recomputed independently: fit on one half, ECE on the other.
    order = np.random.default_rng(0).permutation(len(labels))
    halves = np.array_split(order, 2)
    before = after = 0.0
    for fit, held in ((halves[1], halves[0]), (halves[0], halves[1])):
        t = fit_temperature(logits[fit], labels[fit])
        before += (
            len(held) / 400 * expected_calibration_error(scaled_probs(logits[held]), labels[held])
        )
        after += (
            len(held)
            / 400
            * expected_calibration_error(scaled_probs(logits[held], t), labels[held])
        )
    assert record["cross_fitted_ece_before"] == pytest.approx(before)
    assert record["cross_fitted_ece_after"] == pytest.approx(after)
    assert after > before  # for this draw the fitted T makes unseen images worse ...
    assert not record["applied"] and record["temperature"] == 1.0  # ... so it is not applied
    assert "not applied" in record["decision"]
    assert record["fitted_temperature"] != 1.0  # a fit was made; only its use is decided


def test_too_few_images_to_judge_leave_the_softmax_unscaled():
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 3, size=(10, 3))
    record = calibrate(logits, rng.integers(0, 3, 10))
    assert not record["applied"] and record["temperature"] == 1.0
    assert "too few" in record["decision"]


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="temperature must be positive"):
        scaled_probs(np.zeros((2, 3)), 0.0)
    with pytest.raises(ValueError, match="labels must lie"):
        expected_calibration_error(np.full((2, 3), 1 / 3), np.array([0, 3]))
    with pytest.raises(ValueError, match="N labels"):
        fit_temperature(np.zeros((2, 3)), np.array([0]))
