"""analysis.reruns' statistics against independent computations (no Ray)."""

from __future__ import annotations

import math

import pytest

from analysis.reruns import RerunScores, ranking_holds, separated, t_interval, verdict
from trainables.experiment import RerunPlan

T_975_DF2 = 4.302652729911275  # Student's t 97.5 % quantile, 2 degrees of freedom (tables)


def scores(rank: int, values: list[float]) -> RerunScores:
    return RerunScores(rank, f"t{rank}", 0.0, {"lr": rank}, list(range(len(values))), values)


def test_t_interval_matches_the_textbook_formula() -> None:
    values = [0.70, 0.72, 0.75]
    mean = sum(values) / 3
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)
    half = T_975_DF2 * sd / math.sqrt(3)
    iv = t_interval(values)
    assert (iv.value, iv.low, iv.high) == pytest.approx((mean, mean - half, mean + half), abs=1e-9)
    # A 90 % interval is narrower: the confidence level is not ignored.
    assert t_interval(values, 0.90).high < iv.high
    assert math.isnan(t_interval([0.7]).low) and t_interval([0.7]).value == 0.7


def test_ranking_holds_only_when_the_order_by_mean_is_the_sweeps() -> None:
    plan = RerunPlan(name="r", metric="val_precision", mode="max", seeds=[1, 2, 3], configs=[])
    kept = [scores(1, [0.80, 0.81, 0.82]), scores(2, [0.70, 0.71, 0.72])]
    assert ranking_holds(kept, "max") and separated(kept[0], kept[1], "max")
    assert "holds, and the first configuration's 95 % interval lies clear" in verdict(plan, kept)
    swapped = [scores(1, [0.70, 0.71, 0.72]), scores(2, [0.80, 0.81, 0.82])]
    assert not ranking_holds(swapped, "max") and "does not hold" in verdict(plan, swapped)
    # For a loss (min), lower means are better: the same numbers hold the other way round.
    assert ranking_holds(swapped, "min")
    close = [scores(1, [0.80, 0.70, 0.82]), scores(2, [0.78, 0.71, 0.76])]
    assert ranking_holds(close, "max") and not separated(close[0], close[1], "max")
    assert "intervals overlap" in verdict(plan, close)
