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
from moto_s3 import moto_bucket
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
    # A finished trial is never resumed: its missing checkpoint needs no repair.
    assert repair_missing_checkpoints(str(exp)) == []
    assert _latest_checkpoint(exp) == "checkpoint_000002"
    # A trial the state calls RUNNING (the driver was killed) would be restored from it.
    state_file = max(exp.glob("experiment_state-*.json"))
    state = json.loads(state_file.read_text())
    trial = json.loads(state["trial_data"][0][0])
    state["trial_data"][0][0] = json.dumps(trial | {"status": "RUNNING"})
    state_file.write_text(json.dumps(state))
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
    from search.search_gen import align_search_counter

    notes = align_search_counter(str(searched))
    assert notes and "counted 2 trial(s) but Ray's saved trial table lists 3" in notes[0]
    gen = cloudpickle.loads(max(searched.glob("search_gen_state-*.json")).read_bytes())
    assert gen["counter"] == 3 and gen["finished"] is True
    assert align_search_counter(str(searched)) == []  # aligned once
    # Resumed, the sweep creates no trial beyond its 3 (a counter of 2 would have made a 4th).
    tune.Tuner.restore(str(searched), trainable=_once, resume_errored=True).fit()
    state = json.loads(max(searched.glob("experiment_state-*.json")).read_text())
    assert len(state["trial_data"]) == 3


def _killed_experiment(exp: Path, rows: list[dict], status: str = "RUNNING") -> Path:
    """A driver killed after trial t's last row and before Ray saved it: the trial table still
    says `status`, the searcher (saved with its journal) has t live, and t's folder has `rows`."""
    import optuna

    from search.optuna_pruned import PrunedOptunaSearch

    exp.mkdir()
    searcher = PrunedOptunaSearch(
        lambda trial: trial.suggest_float("lr", 1e-4, 1e-2) and None,
        "val_loss",
        "min",
        sampler=optuna.samplers.RandomSampler(seed=0),
        max_epochs=5,
        study_name="exp",
        journal_file=str(exp / "optuna_journal.log"),
    )
    searcher.suggest("t")
    searcher.save(str(exp / "searcher-state-2026-01-01_00-00-00.pkl"))
    trial = {"trial_id": "t", "relative_logdir": "trial_t", "status": status}
    table = {"trial_data": [[json.dumps(trial), json.dumps({})]], "runner_data": {}}
    (exp / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps(table))
    (exp / "trial_t").mkdir()
    lines = [json.dumps({"trial_id": "t", "training_iteration": r["epoch"], **r}) for r in rows]
    (exp / "trial_t" / "result.json").write_text("\n".join(lines) + "\n")
    return exp


def _status_and_study(exp: Path) -> tuple[str, list]:
    import optuna

    from search.optuna_pruned import journal_storage

    state = json.loads(max(exp.glob("experiment_state-*.json")).read_text())
    status = json.loads(state["trial_data"][0][0])["status"]
    storage = journal_storage(exp / "optuna_journal.log")
    return status, optuna.load_study(study_name="exp", storage=storage).trials


def test_a_trial_asha_stopped_before_the_save_is_finished_not_trained_again(tmp_path):
    """ASHA stopped t at epoch 2 of 5 (its last row says done) after Ray's last save: Ray's
    table still calls it RUNNING and would train it again. The resume marks it TERMINATED and
    tells Optuna it was PRUNED with both epochs."""
    from search.repair import reconcile

    rows = [
        {"epoch": 1, "val_loss": 0.9, "done": False},
        {"epoch": 2, "val_loss": 0.8, "done": True},
    ]
    exp = _killed_experiment(tmp_path / "exp", rows)
    notes = reconcile(exp, max_epochs=5)
    assert notes[0] == (
        "trial t finished (epoch 2) after Ray's last save of its state: recorded as finished, "
        "not trained again"
    )
    status, (study_trial,) = _status_and_study(exp)
    assert status == "TERMINATED"
    assert study_trial.state.name == "PRUNED" and study_trial.intermediate_values == {
        1: 0.9,
        2: 0.8,
    }
    assert reconcile(exp, max_epochs=5) == []  # done once


def test_a_trial_still_training_is_left_to_resume(tmp_path):
    """The same kill while t trains (its last row is not done, epoch 2 of 5): it stays RUNNING
    in the table and in the study, to continue from its checkpoint."""
    from search.repair import reconcile

    rows = [
        {"epoch": 1, "val_loss": 0.9, "done": False},
        {"epoch": 2, "val_loss": 0.8, "done": False},
    ]
    exp = _killed_experiment(tmp_path / "exp", rows)
    assert reconcile(exp, max_epochs=5) == []
    status, (study_trial,) = _status_and_study(exp)
    assert status == "RUNNING" and study_trial.state.name == "RUNNING"


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
    with moto_bucket("runs", tmp_path_factory.mktemp("moto")) as served:
        yield served


def test_on_a_bucket_a_trial_asha_stopped_before_the_save_is_finished_not_trained_again(
    tmp_path, bucket
):
    """The same kill on a bucket: Ray uploads a trial's result.json after it saved the table
    it uploads, so the table still says RUNNING. The resume reads the rows from the bucket."""
    from search.repair import reconcile

    uri, client = bucket
    rows = [
        {"epoch": 1, "val_loss": 0.9, "done": False},
        {"epoch": 2, "val_loss": 0.8, "done": True},
    ]
    exp = _killed_experiment(tmp_path / "exp", rows)
    for path in (p for p in exp.rglob("*") if p.is_file() and p.name != "optuna_journal.log"):
        client.upload_file(str(path), "runs", f"exp/{path.relative_to(exp)}")
    notes = reconcile(uri("exp"), max_epochs=5)
    assert notes[0].startswith("trial t finished (epoch 2) after Ray's last save of its state")
    [state_key] = [
        o["Key"] for o in client.list_objects_v2(Bucket="runs")["Contents"]
        if o["Key"].startswith("exp/experiment_state-")
    ]  # fmt: skip
    state = json.loads(client.get_object(Bucket="runs", Key=state_key)["Body"].read())
    assert json.loads(state["trial_data"][0][0])["status"] == "TERMINATED"
    # The study is in the driver's journal, beside the experiment's local folder.
    _, (study_trial,) = _status_and_study(exp)
    assert study_trial.state.name == "PRUNED" and study_trial.intermediate_values == {
        1: 0.9,
        2: 0.8,
    }
    assert reconcile(uri("exp"), max_epochs=5) == []  # done once
