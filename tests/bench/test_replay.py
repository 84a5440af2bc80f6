"""The replay benchmark's plumbing (bench/replay.py) on small constructed tables, plus one tiny
end-to-end record-and-replay through the product's own training loop and samplers."""

from __future__ import annotations

import json
import math

import numpy as np
import optuna
import pytest

from bench import replay
from bench.replay import Table, asha_stops, read_table, replay_hand, replay_search


def _table(values: np.ndarray, hand: int = 0) -> Table:
    """Configs named by their index (a categorical `config`), curves as given."""
    params = [{"config": c} for c in range(values.shape[0])]
    kinds = ["hand"] * hand + ["sampled"] * (values.shape[0] - hand)
    return Table(params, kinds, values)


def _define(k: int):
    return lambda trial: trial.suggest_categorical("config", list(range(k)))


def test_a_searcher_told_the_answer_finds_it():
    rng = np.random.default_rng(0)
    values = rng.random((12, 3, 4))  # 12 configs, 3 seeds, 4 epochs
    # The true value of (config, epoch) is its mean over seeds; the answer is the best of them.
    means = values.mean(axis=1)
    best_config, best_epoch = np.unravel_index(np.argmax(means), means.shape)
    # An oracle: its first trial is the answer, and with one seed its observed best is the true.
    table1 = _table(np.repeat(means[:, None, :], 1, axis=1))
    found = replay_search(
        table1, optuna.samplers.RandomSampler(seed=1), _define(12), budget=4, grace=4,
        reduction_factor=2, workers=1, points=[{"config": int(best_config)}],
    )  # fmt: skip
    assert found.true == pytest.approx(means[best_config, best_epoch])
    assert found.trace[-1] == (4, found.true)  # four epochs spent, one trial


def test_random_search_expected_best_matches_the_order_statistics_formula():
    k, n, repeats = 10, 4, 800
    true = np.linspace(0.1, 0.9, k)[np.random.default_rng(3).permutation(k)]
    table = _table(true[:, None, None])  # one seed, one epoch: observed = true
    finals = [
        replay_search(
            table,
            optuna.samplers.RandomSampler(seed=r),
            _define(k),
            budget=n,
            grace=1,
            reduction_factor=2,
            workers=1,
        ).true  # fmt: skip
        for r in range(repeats)
    ]
    # n uniform draws with replacement from k values: P(max = v_(i)) = (i/k)^n - ((i-1)/k)^n.
    v = np.sort(true)
    i = np.arange(1, k + 1)
    expected = float(np.sum(v * ((i / k) ** n - ((i - 1) / k) ** n)))
    se = np.std(finals) / math.sqrt(repeats)
    assert abs(np.mean(finals) - expected) < 4 * se


def test_asha_stops_below_rays_quantile_of_earlier_values():
    rung: list[float] = []
    assert not asha_stops(rung, 0.1, 2)  # the first trial at a rung always continues
    assert not asha_stops(rung, 0.3, 2)  # above the median of [0.1]
    # Recorded [0.1, 0.3]: the median 0.2 is the cut-off for rf = 2.
    assert asha_stops(rung, 0.15, 2) and rung == [0.1, 0.3, 0.15]
    assert not asha_stops([0.1, 0.3], 0.25, 2)


def test_asha_in_the_replay_stops_weak_trials_at_the_rung():
    # Config 0 is always weak at epoch 1; with grace 1 and rf 2 it stops after one epoch once
    # a better trial has been recorded at the rung: the budget goes to the others.
    values = np.array([[[0.9, 0.9]], [[0.1, 0.1]], [[0.5, 0.5]]])
    table = _table(values)
    best = replay_search(
        table, optuna.samplers.RandomSampler(seed=0), _define(3), budget=5, grace=1,
        reduction_factor=2, workers=1,
        points=[{"config": 0}, {"config": 1}, {"config": 2}],
    )  # fmt: skip
    # Trial 0: 2 epochs (0.9). Trial 1: 0.1 < 0.9 at the rung, stopped after 1. Trial 2: 0.5
    # < median(0.9, 0.1) = 0.5? No: equal continues, so it trains 2. 2 + 1 + 2 = 5 epochs.
    assert [spent for spent, _ in best.trace] == [1, 2, 3, 4, 5]
    assert best.true == pytest.approx(0.9)


def test_hand_replay_trains_every_setting_to_the_end():
    values = np.random.default_rng(4).random((5, 2, 3))
    table = _table(values, hand=2)
    best = replay_hand(table, seed=0)
    assert len(best.trace) == 2 * 3  # two settings, three epochs each
    assert best.true in {table.true_value(c, e) for c in (0, 1) for e in (1, 2, 3)}


def test_nearest_config_matches_categories_first_then_log_distance():
    table = Table(
        [
            {"model": "a", "lr": 1e-4},
            {"model": "b", "lr": 1e-4},
            {"model": "b", "lr": 1e-2},
        ],
        ["sampled"] * 3,
        np.zeros((3, 1, 1)),
    )
    assert table.nearest({"model": "a", "lr": 1e-2}) == 0  # the category wins over the number
    assert table.nearest({"model": "b", "lr": 3e-3}) == 2  # log10 distance 0.52 against 1.48
    assert table.nearest({"model": "b", "lr": 5e-4}) == 1


@pytest.mark.slow
def test_record_and_replay_end_to_end_at_tiny_size(tmp_path, capsys):
    path = tmp_path / "curves.csv"
    assert replay.main(["record", "--size", "tiny", "--table", str(path), "--threads", "1"]) == 0
    table = read_table(path)
    spec = replay.SIZES["tiny"]
    # Every config x seed x epoch was trained and recorded as a validation score in [0, 1].
    assert table.curves.shape == (spec["hand"] + spec["configs"], spec["seeds"], spec["epochs"])
    assert np.isfinite(table.curves).all() and (0 <= table.curves).all() <= 1
    assert table.hand() == list(range(spec["hand"]))
    out = tmp_path / "replay.json"
    assert replay.main(["replay", "--size", "tiny", "--table", str(path), "--repeats", "3",
                        "--json", str(out)]) == 0  # fmt: skip
    record = json.loads(out.read_text())
    assert set(record["figures"]) >= {"hand study", "random", "tpe", "gp", "budget_epochs"}
    assert record["figures"]["budget_epochs"] == spec["hand"] * spec["epochs"]
    assert "| gp |" in capsys.readouterr().out
