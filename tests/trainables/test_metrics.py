"""Classification metrics against hand-computed values."""

from __future__ import annotations

import pytest

from trainables.metrics import classification_metrics

CLASSES = ["NORMAL", "BACTERIA", "VIRAL"]


def test_metrics_match_a_hand_computed_example():
    # confusion (rows true, cols predicted): NORMAL [2,1,0], BACTERIA [0,2,0], VIRAL [0,1,1]
    y_true = [0, 0, 0, 1, 1, 2, 2]
    y_pred = [0, 0, 1, 1, 1, 2, 1]
    m = classification_metrics(y_true, y_pred, CLASSES, "val")
    recall = [2 / 3, 1.0, 1 / 2]
    precision = [1.0, 2 / 4, 1.0]
    f1 = [2 * p * r / (p + r) for p, r in zip(precision, recall, strict=True)]
    assert m["val_acc"] == pytest.approx(5 / 7)
    assert m["val_precision"] == pytest.approx(sum(precision) / 3)  # macro, the seed's score
    assert m["val_recall"] == pytest.approx(sum(recall) / 3)
    assert m["val_f1"] == pytest.approx(sum(f1) / 3)
    assert m["val_balanced_acc"] == pytest.approx(sum(recall) / 3)
    # per-class accuracy = recall, as in the seed's tables
    assert m["val_acc_normal"] == pytest.approx(2 / 3)
    assert m["val_acc_bacteria"] == pytest.approx(1.0)
    assert m["val_acc_viral"] == pytest.approx(0.5)
    assert all(isinstance(v, float) for v in m.values())  # JSON- and Ray-friendly


def test_absent_class_keeps_its_slot_and_scores_zero():
    # no VIRAL in truth or prediction: labels stay 0..2, so VIRAL is not confused with others
    m = classification_metrics([0, 1, 1], [0, 1, 0], CLASSES, "test")
    assert m["test_acc_viral"] == 0.0
    assert m["test_acc_bacteria"] == pytest.approx(0.5)
    assert m["test_precision"] == pytest.approx((1 / 2 + 1 + 0) / 3)  # zero_division=0
    assert m["test_balanced_acc"] == pytest.approx((1 + 0.5) / 2)  # over present classes


def test_bad_labels_are_refused():
    with pytest.raises(ValueError, match="equally long"):
        classification_metrics([0, 1], [0], CLASSES, "val")
    with pytest.raises(ValueError, match=r"labels \[3\] are outside 0..2"):
        classification_metrics([0, 3], [0, 1], CLASSES, "val")
