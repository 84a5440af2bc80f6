"""search.run: the callbacks a new and a resumed sweep share."""

from __future__ import annotations

from dataclasses import replace

from ray import tune

from search.disk import DiskSpaceCallback, largest_checkpoint, shortfall
from search.run import sweep_callbacks
from trainables.experiment import ExperimentRecord


def test_a_packed_sweep_retries_out_of_memory_trials_new_or_resumed() -> None:
    record = ExperimentRecord(name="exp", metric="val_loss", mode="min", path="s3://b/exp")
    assert sweep_callbacks(record) == []  # shares not packed (CPU, or a whole GPU per trial)
    packed = replace(record, gpu_memory={"card_bytes": 80 * 2**30})
    (callback,) = sweep_callbacks(packed)
    assert isinstance(callback, tune.Callback)
    assert type(callback).on_trial_recover is not tune.Callback.on_trial_recover


def test_a_local_sweep_watches_its_storages_free_space() -> None:
    record = ExperimentRecord(name="exp", metric="val_loss", mode="min", path="/tmp/exp")
    (callback,) = sweep_callbacks(record)
    assert isinstance(callback, DiskSpaceCallback) and str(callback.experiment_dir) == "/tmp/exp"


def test_the_space_a_sweep_needs_is_the_next_checkpoints_plus_the_reserve(tmp_path) -> None:
    mib = 2**20
    assert shortfall(free=29 * mib, running=1, checkpoint_bytes=21 * mib) == 0  # 21 + 8 fit
    assert shortfall(free=20 * mib, running=1, checkpoint_bytes=21 * mib) == 9 * mib
    assert shortfall(free=40 * mib, running=2, checkpoint_bytes=21 * mib) == 10 * mib
    # A resume sizes the next checkpoints by the largest one already in the experiment.
    for epoch, size in ((0, 3000), (1, 5000)):
        checkpoint = tmp_path / "trial_a" / f"checkpoint_00000{epoch}"
        checkpoint.mkdir(parents=True)
        (checkpoint / "checkpoint.pt").write_bytes(b"x" * size)
        (checkpoint / "extra.bin").write_bytes(b"x" * 10)
    (tmp_path / "trial_a" / "result.json").write_text("")
    assert largest_checkpoint(tmp_path) == 5010
