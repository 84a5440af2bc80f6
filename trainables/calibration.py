"""Calibration: expected calibration error and temperature scaling (Guo et al. 2017).

- `expected_calibration_error(probs, labels, bins=15)`: top-label ECE over `bins` equal-width
  bins of the top probability, bin m = ((m - 1) / bins, m / bins] as in Guo et al. (a
  confidence of 0 goes to the first bin; the bin edges of `sklearn.calibration.calibration_curve`
  too): sum over bins of (images in the bin / all images) * |accuracy in the bin - mean
  confidence in the bin|.
- `fit_temperature(logits, labels)`: the one scalar T > 0 that minimises the negative
  log-likelihood of softmax(logits / T) on the given (validation) logits; scipy's bounded
  scalar minimiser over log T. Scaling by T never changes a prediction (argmax), only its
  confidence.

The exported bundle keeps the fit under `calibration` (`trainables.bundle.calibration_of`);
`search.export` fits it on the validation split, `analysis.predict` applies it. `calibrate` keeps
T only when it lowers the ECE of validation images it was not fitted on (two-fold cross-fitting,
`cross_fitted_ece`); otherwise the bundle says so and applies T = 1.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

ECE_BINS = 15  # equal-width confidence bins, the usual choice since Guo et al. 2017
LOG_T_BOUNDS = (math.log(0.05), math.log(20.0))  # temperatures searched, 0.05 to 20


def _check(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels).astype(np.int64)
    if probs.ndim != 2 or len(probs) != len(labels) or not len(labels):
        raise ValueError(
            f"calibration needs probabilities (N, C) and N labels, got {probs.shape} and "
            f"{labels.shape}"
        )
    if labels.min() < 0 or labels.max() >= probs.shape[1]:
        raise ValueError(f"labels must lie in 0..{probs.shape[1] - 1}")
    return probs, labels


def reliability_bins(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict:
    """Per bin: `lower`, `upper`, `count`, `confidence` (mean top probability), `accuracy`
    (share of top-label predictions that are right); empty bins have count 0 and NaN means."""
    probs, labels = _check(probs, labels)
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    conf = probs.max(axis=1)
    right = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.searchsorted(edges[1:-1], conf, side="left")  # bin m holds (lower, upper]
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, weights=conf, minlength=bins) / count
        accuracy = np.bincount(which, weights=right, minlength=bins) / count
    return {
        "lower": edges[:-1],
        "upper": edges[1:],
        "count": count,
        "confidence": mean_conf,
        "accuracy": accuracy,
    }


def expected_calibration_error(
    probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> float:
    """Top-label ECE with `bins` equal-width bins (see the module docstring)."""
    table = reliability_bins(probs, labels, bins)
    full = table["count"] > 0
    gaps = np.abs(table["accuracy"][full] - table["confidence"][full])
    return float(np.sum(table["count"][full] * gaps) / np.sum(table["count"]))


def scaled_probs(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / temperature), float64."""
    check_temperature(temperature)
    return softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the labels under softmax(logits / temperature)."""
    logp = log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)
    return float(-np.mean(logp[np.arange(len(labels)), np.asarray(labels, dtype=np.int64)]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """T minimising the NLL of softmax(logits / T); pass validation logits, never test ones."""
    logits, labels = _check(logits, labels)
    result = minimize_scalar(
        lambda log_t: nll(logits, labels, math.exp(log_t)),
        bounds=LOG_T_BOUNDS,
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(math.exp(result.x))


def check_temperature(temperature: float) -> float:
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number, got {temperature!r}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return float(temperature)


CROSS_FIT_FOLDS = 2  # validation halves: T fitted on one, judged on the other, both ways
CROSS_FIT_SEED = 0  # which images fall in which half (fixed: one bundle, one decision)
MIN_IMAGES_TO_JUDGE = 20  # fewer validation images than this: too few to judge, T not applied


def cross_fitted_ece(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(ECE without scaling, ECE with a T fitted on the other fold), over held-out folds.

    T is always fitted by NLL on the images it scales, so judging it on those same images
    flatters it; each fold here is scaled by a T it never saw, as a new image would be."""
    logits, labels = _check(logits, labels)
    order = np.random.default_rng(CROSS_FIT_SEED).permutation(len(labels))
    folds = np.array_split(order, CROSS_FIT_FOLDS)
    before = after = 0.0
    for k, held in enumerate(folds):
        fit = np.concatenate([f for j, f in enumerate(folds) if j != k])
        t = fit_temperature(logits[fit], labels[fit])
        w = len(held) / len(labels)
        before += w * expected_calibration_error(scaled_probs(logits[held]), labels[held])
        after += w * expected_calibration_error(scaled_probs(logits[held], t), labels[held])
    return float(before), float(after)


def calibrate(logits: np.ndarray, labels: np.ndarray, split: str = "val") -> dict[str, Any]:
    """Fit T on `logits` of split `split`, and apply it only where it helps.

    The record (bundle.json `calibration`): `temperature` (the one applied: the fit, or 1.0),
    `fitted_temperature`, `applied` and `decision` (in words), `fitted_on`, ECE and NLL on the
    split before and after the fit, `cross_fitted_ece_before/after` (the held-out judgement,
    `cross_fitted_ece`), `ece_bins`, `images`. T is applied when its held-out ECE is lower than
    no scaling's; a split of fewer than MIN_IMAGES_TO_JUDGE images is too small to judge."""
    logits, labels = _check(logits, labels)
    t = fit_temperature(logits, labels)
    record: dict[str, Any] = {
        "fitted_temperature": t,
        "fitted_on": split,
        "ece_before": expected_calibration_error(scaled_probs(logits), labels),
        "ece_after": expected_calibration_error(scaled_probs(logits, t), labels),
        "nll_before": nll(logits, labels),
        "nll_after": nll(logits, labels, t),
        "ece_bins": ECE_BINS,
        "images": int(len(labels)),
    }
    if len(labels) < MIN_IMAGES_TO_JUDGE:
        applied, why = False, f"{len(labels)} {split} images are too few to judge it"
    else:
        before, after = cross_fitted_ece(logits, labels)
        record |= {"cross_fitted_ece_before": before, "cross_fitted_ece_after": after}
        applied = after < before
        why = (
            f"held-out ECE {before:.4f} -> {after:.4f} ({CROSS_FIT_FOLDS}-fold cross-fitted "
            f"on {split})"
        )
    verdict = "applied" if applied else "not applied"
    return record | {
        "temperature": t if applied else 1.0,
        "applied": applied,
        "decision": f"T = {t:.3f} {verdict}: {why}",
    }
