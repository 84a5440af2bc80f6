"""Reading a real sweep from its files: best checkpoints by metric and mode, statuses, resumes."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from analysis.load import load_experiment
from trainables.experiment import COMPLETED, STOPPED, read_record

pytestmark = pytest.mark.slow  # needs the session's smoke sweep


def test_best_checkpoint_follows_the_sweeps_metric_and_mode(smoke_experiment):
    exp = load_experiment(smoke_experiment)
    record = read_record(smoke_experiment)
    # Metric and mode come from the experiment record, defined once in the space file.
    assert (exp.metric, exp.mode, exp.max_epochs) == (record.metric, record.mode, 3)
    assert exp.record == record
    pick = min if exp.mode == "min" else max
    for t in exp.usable():
        kept = t.history[t.history["epoch"].isin(list(t.checkpoints))]
        # The best checkpoint is the best score among epochs whose checkpoint Ray kept.
        assert t.best_score == pick(kept[exp.metric])
        assert (t.best_checkpoint / "checkpoint.pt").is_file()
    ranked = exp.ranked()
    scores = [t.best_score for t in ranked]
    assert scores == sorted(scores, reverse=exp.mode == "max")
    assert exp.best_trial() is ranked[0]


def test_statuses_and_epochs_come_from_the_files(smoke_experiment):
    exp = load_experiment(smoke_experiment)
    for t in exp.trials:
        # A trial that ran all epochs completed; one short of them was stopped by ASHA.
        assert t.status == (COMPLETED if t.epochs == exp.max_epochs else STOPPED)
        assert t.epochs == len(t.history) and t.seconds > 0
        assert t.config is not None and t.config.image_size == 32
    summary = exp.summary()
    assert summary["trial_id"].tolist() == [t.trial_id for t in exp.trials]
    # The row's epochs is what the trial ran, not its epochs budget parameter.
    assert summary["epochs"].tolist() == [t.epochs for t in exp.trials]


def test_a_resumed_trials_repeated_epoch_keeps_its_last_report(smoke_experiment, tmp_path):
    exp_dir = tmp_path / "smoke"
    shutil.copytree(smoke_experiment, exp_dir, copy_function=os.symlink)
    trial_dir = next(d for d in sorted(exp_dir.iterdir()) if (d / "result.json").exists())
    rows = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
    # A retry from the epoch-1 checkpoint reports epoch 1 again with a new score.
    again = dict(rows[0], val_loss=0.123, val_acc=0.987)
    (trial_dir / "result.json").unlink()
    text = "".join(json.dumps(r) + "\n" for r in [*rows, again])
    (trial_dir / "result.json").write_text(text)
    trial = next(t for t in load_experiment(exp_dir).trials if t.path == trial_dir)
    assert trial.history["epoch"].is_unique
    assert trial.history.set_index("epoch").loc[1, "val_loss"] == 0.123


def test_a_torn_ray_state_is_a_note_and_the_trials_still_load(smoke_experiment, tmp_path):
    exp_dir = tmp_path / "smoke"
    shutil.copytree(smoke_experiment, exp_dir, copy_function=os.symlink)
    whole = load_experiment(exp_dir)
    state = max(exp_dir.glob("experiment_state-*.json"))
    text = state.read_text()
    state.unlink()  # a symlink into the shared fixture: replace it, never write through it
    state.write_text(text[: len(text) // 2])  # a write cut short by a full disk
    torn = load_experiment(exp_dir)
    # The report still reads every trial from its folder, and says what it could not read.
    assert [t.trial_id for t in torn.trials] == [t.trial_id for t in whole.trials]
    assert [t.epochs for t in torn.trials] == [t.epochs for t in whole.trials]
    assert any(state.name in m and "trial folders alone" in m for m in torn.missing)
