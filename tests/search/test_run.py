"""search.run: the callbacks a new and a resumed sweep share."""

from __future__ import annotations

from dataclasses import replace

from ray import tune

from search.run import sweep_callbacks
from trainables.experiment import ExperimentRecord


def test_a_packed_sweep_retries_out_of_memory_trials_new_or_resumed() -> None:
    record = ExperimentRecord(name="exp", metric="val_loss", mode="min", path="/tmp/exp")
    assert sweep_callbacks(record) == []  # shares not packed (CPU, or a whole GPU per trial)
    packed = replace(record, gpu_memory={"card_bytes": 80 * 2**30})
    (callback,) = sweep_callbacks(packed)
    assert isinstance(callback, tune.Callback)
    assert type(callback).on_trial_recover is not tune.Callback.on_trial_recover
