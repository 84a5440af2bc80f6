"""The sweep's Tuner pieces (search.tuner), built from the experiment record, no Ray started."""

from __future__ import annotations

from pathlib import Path

import pytest

from search.space import load_space
from search.tuner import TunerSettings, build_scheduler, build_searcher, settings_for
from trainables.experiment import ExperimentRecord

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def space():
    return load_space(REPO / "spaces" / "smoke.py")


def test_settings_come_from_the_record(space) -> None:
    record = ExperimentRecord(
        name="exp",
        storage="/runs",
        metric=space.metric,
        mode=space.mode,
        max_epochs=space.max_epochs,
        grace_period=1,
        reduction_factor=2,
        num_samples=5,
        max_concurrent=2,
        args={"seed": 3, "time_budget": 30.0, "wandb_project": "p"},
    )
    settings = settings_for(record, space)
    assert (settings.metric, settings.mode, settings.max_epochs) == (
        space.metric,
        space.mode,
        space.max_epochs,
    )
    assert (settings.seed, settings.time_budget_s, settings.wandb_project) == (3, 30.0, "p")
    assert (settings.num_samples, settings.max_concurrent, settings.reduction_factor) == (5, 2, 2)


def test_searcher_and_scheduler_follow_the_settings(space) -> None:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter

    base = dict(name="e", storage="/r", metric="val_loss", mode="min", max_epochs=3)
    settings = TunerSettings(**base, num_samples=4, grace_period=1, reduction_factor=3)
    asha = build_scheduler(settings)
    assert isinstance(asha, ASHAScheduler) and asha._max_t == 3
    assert not isinstance(build_searcher(settings, space.define), ConcurrencyLimiter)
    limited = TunerSettings(
        **base, num_samples=4, grace_period=1, reduction_factor=3, max_concurrent=2
    )
    assert isinstance(build_searcher(limited, space.define), ConcurrencyLimiter)
    fifo = TunerSettings(**base, num_samples=4, grace_period=1, reduction_factor=3, asha=False)
    assert isinstance(build_scheduler(fifo), FIFOScheduler)
    grid = TunerSettings(**base, num_samples=1, grace_period=1, reduction_factor=3, search="grid")
    assert build_searcher(grid, space.define) is None
    with pytest.raises(ValueError, match="unknown search 'bayes'"):
        TunerSettings(**base, num_samples=1, grace_period=1, reduction_factor=3, search="bayes")
    with pytest.raises(ValueError, match="unknown mode 'up'"):
        TunerSettings(**{**base, "mode": "up"}, num_samples=1, grace_period=1, reduction_factor=3)
