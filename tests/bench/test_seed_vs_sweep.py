"""The seed-vs-sweep benchmark's logic, in seconds: the epoch budget, the paired comparison,
the verdict and the table (the Ray runs themselves are the benchmark's, bench/RESULTS.md)."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.tables import Scored
from bench.seed_vs_sweep import EpochBudget, as_json, compare, per_seed, pool, table, verdict

CLASSES = ["NORMAL", "BACTERIA", "VIRAL"]


def side(labels: np.ndarray, preds: np.ndarray) -> dict:
    scored = Scored(labels, preds, np.zeros((len(labels), 3)), CLASSES)
    paths = [f"test/{i}.png" for i in range(len(labels))]
    return {"scored": {v: scored for v in ("none", "tta2", "chosen")}, "test_paths": paths}


def test_epoch_budget_stops_the_run_at_the_hand_studys_epochs() -> None:
    budget = EpochBudget(9 * 2)
    for i in range(17):
        assert budget("t", {"epoch": 1}) is False  # never stops a single trial
        assert not budget.stop_all(), i
    budget("t", {"epoch": 2})
    assert budget.stop_all() and budget.used == 18
    with pytest.raises(ValueError, match="at least 1"):
        EpochBudget(0)


def test_comparison_pairs_the_two_bests_on_the_same_images() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 200)
    seed_preds = np.where(rng.random(200) < 0.6, labels, (labels + 1) % 3)
    sweep_preds = seed_preds.copy()
    # The sweep fixes 30 of the study's mistakes and breaks 5 of its right answers.
    wrong, right = np.flatnonzero(seed_preds != labels), np.flatnonzero(seed_preds == labels)
    sweep_preds[wrong[:30]] = labels[wrong[:30]]
    sweep_preds[right[:5]] = (labels[right[:5]] + 2) % 3
    rows = compare(side(labels, seed_preds), side(labels, sweep_preds))
    first = rows[0]
    # Independent checks: accuracies by counting, McNemar's counts, and its exact p-value
    # (two-sided binomial of 30 successes in 35 at 1/2, computed by hand from the pmf).
    assert first["seed_acc"].value == pytest.approx(np.mean(seed_preds == labels))
    assert first["sweep_acc"].value == pytest.approx(np.mean(sweep_preds == labels))
    m = first["mcnemar"]
    assert (m.wrong_to_right, m.right_to_wrong) == (30, 5)
    from math import comb

    tail = sum(comb(35, k) for k in range(30, 36)) / 2**35
    assert m.pvalue == pytest.approx(2 * tail)
    assert "the sweep is better" in verdict(rows) and "ahead by 12.5 accuracy points" in verdict(
        rows
    )
    text = table(
        rows, {"sweep": {"trials": 3, "epochs": 18, "trial_cpu_seconds": 5.0, "wall_s": 4}}
    )
    assert (
        "| none |" in text
        and "30 fixed / 5 broken" in text
        and "| sweep | 3 | 18 | 5 | 4 |" in text
    )
    assert as_json(rows)[0]["mcnemar"]["significant"] is True


def test_identical_predictions_are_within_noise_and_other_images_are_refused() -> None:
    labels = np.array([0, 1, 2, 1] * 10)
    preds = np.array([0, 1, 1, 1] * 10)
    rows = compare(side(labels, preds), side(labels, preds))
    assert "none: level (macro precision +0.0" in verdict(
        rows
    ) and "within noise (p = 1)" in verdict(rows)
    other = side(labels, preds)
    other["test_paths"] = other["test_paths"][::-1]
    with pytest.raises(ValueError, match="same test images"):
        compare(side(labels, preds), other)


def test_seeds_pool_into_one_paired_test_on_the_stacked_images() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 120)
    pairs, counts = [], []
    for seed in range(3):
        study = np.where(rng.random(120) < 0.5, labels, (labels + 1) % 3)
        sweep = np.where(rng.random(120) < 0.7, labels, (labels + 2) % 3)
        counts.append(
            (
                np.sum((study != labels) & (sweep == labels)),
                np.sum((study == labels) & (sweep != labels)),
            )
        )
        pairs.append(
            {
                "seed": seed,
                "hand_study": side(labels, study) | {"val_value": 0.5},
                "sweep": side(labels, sweep) | {"val_value": 0.6},
            }
        )
    rows = compare(pool([p["hand_study"] for p in pairs]), pool([p["sweep"] for p in pairs]))
    m = rows[0]["mcnemar"]
    # The stratified test for matched pairs: discordant images summed over the seeds.
    fixed, broken = (int(sum(c[i] for c in counts)) for i in (0, 1))
    assert (m.wrong_to_right, m.right_to_wrong) == (fixed, broken) and rows[0]["n_test"] == 360
    from math import comb

    n, k = fixed + broken, max(fixed, broken)
    assert m.pvalue == pytest.approx(min(1.0, 2 * sum(comb(n, j) for j in range(k, n + 1)) / 2**n))
    text = per_seed(pairs)
    assert [line.split(" | ")[0] for line in text.splitlines()[2:]] == ["| 0", "| 1", "| 2"]
    for seed, (f, b) in enumerate(counts):
        assert f"{f} fixed / {b} broken" in text.splitlines()[2 + seed]
