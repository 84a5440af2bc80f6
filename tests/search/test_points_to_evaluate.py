"""Known-good configurations run first: a real Ray Tune sweep with a define-by-run space.

ray#35319: some Ray versions ignored `points_to_evaluate` for define-by-run spaces. This runs the
product's driver on a tiny space whose POINTS_TO_EVALUATE name exact learning rates no sampler
would draw, and checks that the first trials Ray created are those points, in order.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from trainables.experiment import read_params, read_ray_states, read_record

REPO = Path(__file__).resolve().parents[2]

SPACE = """
METRIC = "val_loss"
MODE = "min"
MAX_EPOCHS = 1
NUM_SAMPLES = 5
POINTS_TO_EVALUATE = [
    {"lr": 0.000123, "balance": "oversample"},
    {"lr": 0.00456, "balance": "original"},
]


def define(trial):
    trial.suggest_float("lr", 1e-5, 1e-2, log=True)
    trial.suggest_categorical("balance", ["original", "oversample"])
    return {"model": "simple_cnn_10m", "image_size": 32, "batch_size": 16, "max_train_batches": 2}
"""

pytestmark = pytest.mark.slow


def test_enqueued_points_are_the_first_trials_of_a_real_sweep(tmp_path: Path) -> None:
    space = tmp_path / "points.py"
    space.write_text(SPACE)
    storage = tmp_path / "runs"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "search.run",
            "--space",
            str(space),
            "--storage",
            str(storage),
            "--name",
            "points",
            "--num-samples",
            "5",
            "--max-concurrent",
            "2",
            "--no-export",
            "--wandb-mode",
            "disabled",
        ],
        cwd=REPO,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"},
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    exp = storage / "points"
    # Creation order is the study's trial numbers in the journal (Ray's trial ids are random and
    # two trials launched together start in either order); each finished study trial names the
    # Ray trial that ran it, and that trial's own params.json must hold the same values.
    study = optuna.load_study(
        study_name="points",
        storage=JournalStorage(JournalFileBackend(str(exp / "optuna_journal.log"))),
    )
    dirs = {s.trial_id: s.dir_name for s in read_ray_states(exp)}
    by_number = sorted(study.get_trials(), key=lambda t: t.number)
    trials = {t.number: read_params(exp / dirs[t.user_attrs["ray_trial_id"]]) for t in by_number}
    for t in by_number:
        assert {k: trials[t.number][k] for k in t.params} == t.params
    assert sorted(trials) == list(range(5))
    # The first two trials Ray created are the enqueued points, exactly and in order.
    assert (trials[0]["lr"], trials[0]["balance"]) == (0.000123, "oversample")
    assert (trials[1]["lr"], trials[1]["balance"]) == (0.00456, "original")
    # The later ones are the sampler's own (a drawn lr never equals a point's to 6 digits).
    assert all(trials[i]["lr"] not in (0.000123, 0.00456) for i in (2, 3, 4))
    # The record states the points and TPE's start-up count: 2 points + max(3, 5 / 3) random.
    record = read_record(exp)
    assert record.points_to_evaluate == [
        {"lr": 0.000123, "balance": "oversample"},
        {"lr": 0.00456, "balance": "original"},
    ]
    assert record.tpe_startup_trials == 5
    assert re.search(r"TPE: 2 enqueued point\(s\) first .*until 5 trials", proc.stdout)
