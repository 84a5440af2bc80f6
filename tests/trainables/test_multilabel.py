"""Multi-label rules: each uncertainty policy changes the loss exactly as stated (a batch computed
by hand), per-finding AUROC / AP agree with scikit-learn, findings with one class are left out of
the mean, Youden thresholds, strata, and multi-label training end to end on the phantom."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from trainables.config import TrialConfig
from trainables.data import load_for_config
from trainables.multilabel import (
    NEGATIVE,
    POSITIVE,
    UNCERTAIN,
    UNMENTIONED,
    check_balance,
    multilabel_loss,
    multilabel_metrics,
    pos_weights,
    strata,
    youden_thresholds,
)
from trainables.train import train

# Two images, two findings: a positive, an uncertain, an uncertain and an unmentioned label.
LOGITS = torch.tensor([[0.0, 2.0], [1.0, -1.0]])
CODES = torch.tensor([[POSITIVE, UNCERTAIN], [UNCERTAIN, UNMENTIONED]])


def bce(x: float, t: float, w: float = 1.0) -> float:
    """-[w t log s(x) + (1 - t) log(1 - s(x))], written out."""
    s = 1 / (1 + math.exp(-x))
    return -(w * t * math.log(s) + (1 - t) * math.log(1 - s))


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        # U-Ignore: the two uncertain labels leave the loss; mean over the two counted ones.
        ("ignore", (bce(0, 1) + bce(-1, 0)) / 2),
        # U-Ones: uncertain labels are positives; unmentioned is negative.
        ("ones", (bce(0, 1) + bce(2, 1) + bce(1, 1) + bce(-1, 0)) / 4),
        # U-Zeros: uncertain labels are negatives.
        ("zeros", (bce(0, 1) + bce(2, 0) + bce(1, 0) + bce(-1, 0)) / 4),
    ],
)
def test_each_uncertainty_policy_changes_the_loss_as_stated(policy, expected):
    assert multilabel_loss(LOGITS, CODES, policy).item() == pytest.approx(expected, rel=1e-6)


def test_class_weights_are_negatives_over_positives_per_finding():
    codes = torch.tensor([[1, 0], [0, -1], [0, 1], [-2, 1]])
    # Finding 0: 1 positive, 3 negatives (unmentioned counts negative); finding 1 under
    # U-Ignore: 2 positives, 1 negative; under U-Ones 3 positives, 1 negative.
    assert pos_weights(codes, "ignore").tolist() == pytest.approx([3.0, 0.5])
    assert pos_weights(codes, "ones").tolist() == pytest.approx([3.0, 1 / 3])
    weight = pos_weights(CODES, "zeros")  # finding 0: 1 pos, 1 neg; finding 1: no positive -> 1
    expected = (bce(0, 1, 1.0) + bce(2, 0) + bce(1, 0) + bce(-1, 0)) / 4
    assert multilabel_loss(LOGITS, CODES, "zeros", weight).item() == pytest.approx(expected)


def test_per_finding_auroc_and_ap_match_scikit_learn_and_one_class_findings_leave_the_mean():
    rng = np.random.default_rng(0)
    codes = rng.choice([POSITIVE, NEGATIVE, UNCERTAIN, UNMENTIONED], size=(60, 3))
    codes[:, 2] = NEGATIVE  # no positive: no AUROC
    probs = rng.random((60, 3))
    m = multilabel_metrics(codes, probs, ["A b", "C", "D"], "val")
    aurocs = []
    for j, key in enumerate(["a_b", "c"]):
        counted = codes[:, j] != UNCERTAIN  # uncertain labels are left out of the metric
        y = (codes[counted, j] == POSITIVE).astype(int)
        aurocs.append(roc_auc_score(y, probs[counted, j]))
        assert m[f"val_auroc_{key}"] == pytest.approx(aurocs[-1])
        assert m[f"val_ap_{key}"] == pytest.approx(average_precision_score(y, probs[counted, j]))
    assert math.isnan(m["val_auroc_d"]) and m["val_scored_findings"] == 2
    assert m["val_mean_auroc"] == pytest.approx(np.mean(aurocs))


def test_youden_thresholds_maximise_sensitivity_plus_specificity():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 80)
    probs = np.clip(0.3 * y + rng.random(80) * 0.7, 0, 1)
    (threshold,) = youden_thresholds(y[:, None], probs[:, None])

    def j(t: float) -> float:
        pred = probs >= t
        return pred[y == 1].mean() + (~pred[y == 0]).mean() - 1

    assert j(threshold) == pytest.approx(max(j(t) for t in probs))  # brute force over cuts


def test_strata_are_the_rarest_positive_finding_or_none():
    codes = np.array([[1, 1, 0], [1, 0, 0], [1, 0, 0], [0, 0, -1], [0, 1, 1]])
    # Frequencies: finding 0 thrice, 1 twice, 2 once; no positive -> stratum 3.
    assert strata(codes).tolist() == [1, 0, 0, 3, 2]


def test_resampling_balances_are_refused_for_multi_label_data_in_one_line():
    for balance in ("oversample", "undersample"):
        with pytest.raises(ValueError, match=r"resamples images by class.*class_weights"):
            check_balance(balance)
    check_balance("class_weights")


@pytest.mark.slow
def test_multi_label_training_reports_per_finding_auroc_on_the_phantom():
    """The NIH-style manifest trains here; the CheXpert-style one is swept in
    tests/search/test_multilabel_sweep.py."""
    chexpert = load_for_config(TrialConfig(data="phantom:multilabel_chexpert", image_size=32))
    counts = chexpert.report.finding_counts["train"]
    assert all(c["uncertain"] and c["unmentioned"] for c in counts.values())  # some uncertain
    cfg = TrialConfig(
        data="phantom:multilabel",
        image_size=32,
        batch_size=32,
        epochs=1,
        balance="class_weights",
        uncertainty="zeros",
        max_train_batches=2,
    )
    data = load_for_config(cfg)
    assert data.multilabel and data.classes == sorted(chexpert.classes)  # NIH: names sorted
    # The same images: NIH's positives are CheXpert's 1s (its -1s and blanks are not findings).
    assert data.report.finding_counts["train"]["Nodule"]["uncertain"] == 0
    reported = []
    metrics = train(cfg, lambda m, _: reported.append(m), dataset=data)
    assert 0.0 <= metrics["val_mean_auroc"] <= 1.0 and metrics["val_scored_findings"] == 5
    assert {f"val_auroc_{f.lower()}" for f in data.classes} <= set(metrics)
    with pytest.raises(ValueError, match="resamples images by class"):
        train(TrialConfig(**{**cfg.to_dict(), "balance": "oversample"}), print, dataset=data)
