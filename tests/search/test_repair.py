"""A killed driver's saved state may name a checkpoint Ray already deleted; the repair before a
resume repoints that trial at a checkpoint that still exists."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import ray
from ray import cloudpickle, tune
from ray._common.utils import hex_to_binary

from search.repair import repair_missing_checkpoints


def _counter(config):
    for step in range(1, 4):
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "step.txt").write_text(str(step))
            tune.report({"score": float(step)}, checkpoint=tune.Checkpoint.from_directory(tmp))


def _latest_checkpoint(exp: Path) -> str | None:
    state = json.loads(max(exp.glob("experiment_state-*.json")).read_text())
    meta = json.loads(state["trial_data"][0][1])
    manager = cloudpickle.loads(hex_to_binary(meta["checkpoint_manager"]["value"]))
    latest = manager._latest_checkpoint_result
    return None if latest is None else Path(latest.checkpoint.path).name


# Ray workers cannot import this test module: ship the trainable by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    temp = tempfile.mkdtemp(prefix="r", dir="/tmp")
    ray.init(
        num_cpus=1,
        object_store_memory=100 * 2**20,
        include_dashboard=False,
        _temp_dir=temp,
        log_to_driver=False,
    )
    try:
        storage = tmp_path_factory.mktemp("storage")
        tune.Tuner(
            _counter,
            run_config=tune.RunConfig(
                name="exp",
                storage_path=str(storage),
                verbose=0,
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            ),
        ).fit()
        yield storage / "exp"
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def test_repair_leaves_an_intact_experiment_alone(experiment):
    exp = experiment
    before = {p.name: p.read_bytes() for p in exp.glob("experiment_state-*.json")}
    # Nothing is missing: nothing is reported and the state file is not rewritten.
    assert repair_missing_checkpoints(str(exp)) == []
    assert {p.name: p.read_bytes() for p in exp.glob("experiment_state-*.json")} == before


def test_repair_repoints_a_trial_whose_latest_checkpoint_is_gone(experiment):
    # The state holds absolute checkpoint paths, so this works on the experiment itself
    # (after the intact-experiment test above).
    exp = experiment
    assert _latest_checkpoint(exp) == "checkpoint_000002"
    shutil.rmtree(
        exp
        / next(p.name for p in exp.iterdir() if p.is_dir() and p.name.startswith("_counter"))
        / "checkpoint_000002"
    )
    notes = repair_missing_checkpoints(str(exp))
    # The trial now resumes from the newest checkpoint that still exists, and the driver says so.
    assert _latest_checkpoint(exp) == "checkpoint_000001"
    assert len(notes) == 1 and "checkpoint_000002 is gone" in notes[0]


def _once(config):
    tune.report({"score": config["x"]})


@pytest.fixture(scope="module")
def searched(experiment, tmp_path_factory):
    """A finished 3-trial sweep with a searcher behind a ConcurrencyLimiter (Ray is the
    `experiment` fixture's), whose saved search counts one trial fewer than its trial table:
    the state a driver killed between two uploads of Ray's state files leaves in a bucket."""
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    storage = tmp_path_factory.mktemp("searched")

    def tuner():
        searcher = OptunaSearch(metric="score", mode="max", seed=0)
        return tune.Tuner(
            _once,
            param_space={"x": tune.uniform(0, 1)},
            tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, 1), num_samples=3),
            run_config=tune.RunConfig(name="s", storage_path=str(storage), verbose=0),
        )

    tuner().fit()
    exp = storage / "s"
    gen_file = max(exp.glob("search_gen_state-*.json"))
    gen = cloudpickle.loads(gen_file.read_bytes())
    assert gen["counter"] == 3
    gen["counter"], gen["finished"] = 2, False
    gen_file.write_bytes(cloudpickle.dumps(gen))
    return exp


def test_a_search_counter_behind_the_trial_table_is_aligned_and_makes_no_extra_trial(searched):
    from search.repair import align_search_counter

    notes = align_search_counter(str(searched))
    assert notes and "counted 2 trial(s) but Ray's saved trial table lists 3" in notes[0]
    gen = cloudpickle.loads(max(searched.glob("search_gen_state-*.json")).read_bytes())
    assert gen["counter"] == 3 and gen["finished"] is True
    assert align_search_counter(str(searched)) == []  # aligned once
    # Resumed, the sweep creates no trial beyond its 3 (a counter of 2 would have made a 4th).
    tune.Tuner.restore(str(searched), trainable=_once, resume_errored=True).fit()
    state = json.loads(max(searched.glob("experiment_state-*.json")).read_text())
    assert len(state["trial_data"]) == 3
