"""summary.json's best (search.summary.best_epoch) for a sweep at a URI: the checkpoints Ray kept,
ranked by the product's rule (`trainables.experiment.rank_key`), as the export ranks them."""

from __future__ import annotations

from ray.tune import Checkpoint, Result

from search.summary import best_epoch
from trainables.experiment import ExperimentRecord


def _result(tmp_path, trial_id: str, scores: dict[int, float]) -> Result:
    kept = []
    for epoch, value in scores.items():
        folder = tmp_path / trial_id / f"checkpoint_{epoch:06d}"
        folder.mkdir(parents=True)
        metrics = {"trial_id": trial_id, "epoch": epoch, "val_loss": value, "val_acc": 1 - value}
        kept.append((Checkpoint.from_directory(str(folder)), metrics))
    last = {**kept[-1][1], "config": {"lr": len(trial_id)}}  # Result.config reads it here
    return Result(
        metrics=last,
        checkpoint=kept[-1][0],
        error=None,
        path=str(tmp_path / trial_id),
        best_checkpoints=kept,
    )


def test_a_uri_sweeps_best_is_the_better_value_then_earlier_epoch_then_trial_id(tmp_path):
    record = ExperimentRecord(
        name="exp", metric="val_loss", mode="min", max_epochs=4, path="s3://bucket/runs/exp"
    )
    # Listed first and equal in value: Ray's ranking would take bbb; the product's rule takes
    # the earlier epoch (aaa's epoch 2), as the export and the report do.
    grid = [
        _result(tmp_path, "bbb", {3: 0.5, 4: 0.7}),
        _result(tmp_path, "aaa", {2: 0.5, 4: 0.9}),
        _result(tmp_path, "ccc", {1: float("nan")}),  # NaN never wins
    ]
    best = best_epoch(grid, record)
    assert (best["trial_id"], best["epoch"], best["checkpoint"]) == ("aaa", 2, "checkpoint_000002")
    assert best["value"] == 0.5 and best["metrics"] == {"val_loss": 0.5, "val_acc": 0.5}
    assert best["path"].endswith("aaa") and best["config"] == {"lr": 3}
    # On an equal value and epoch the smaller trial id wins.
    grid[1] = _result(tmp_path / "again", "aaa", {3: 0.5})
    assert best_epoch(grid, record)["trial_id"] == "aaa"
    assert best_epoch([grid[2]], record) is None
