"""The experiment folder's one owner: the record, result rows, Ray's state, the best checkpoint."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from pathlib import Path

import pytest
import torch

from trainables.config import TrialConfig
from trainables.experiment import (
    COMPLETED,
    ERRORED,
    EXPERIMENT_FILE,
    SCHEMA_VERSION,
    STOPPED,
    UNFINISHED,
    ExperimentRecord,
    best_checkpoint,
    epoch_rows,
    is_better,
    parse_record,
    rank_key,
    read_ray_states,
    read_record,
    read_results,
    trial_checkpoints,
    trial_outcome,
    write_record,
)
from trainables.models import build_model

CLASSES = ["normal", "bacteria", "viral"]
CFG = TrialConfig(model="simple_cnn_10m", image_size=32, augment="none", weights="none")


def _record(**changes) -> ExperimentRecord:
    values = {"name": "exp", "metric": "val_loss", "mode": "min", "max_epochs": 3}
    return ExperimentRecord(**{**values, **changes})


def test_record_round_trips_and_refuses_bad_files(tmp_path: Path) -> None:
    record = _record(num_samples=4, args={"seed": 7, "wandb_project": "p", "time_budget": 60.0})
    write_record(tmp_path, record)
    assert read_record(tmp_path) == record
    assert (record.seed, record.wandb_project, record.time_budget) == (7, "p", 60.0)
    saved = json.loads((tmp_path / EXPERIMENT_FILE).read_text())
    assert saved["schema_version"] == SCHEMA_VERSION
    # A file written before schema_version existed reads as version 1.
    old = {k: v for k, v in saved.items() if k != "schema_version"}
    assert parse_record(json.dumps(old)) == record
    with pytest.raises(ValueError, match=r"unknown fields \['epochz'\]"):
        parse_record(json.dumps({**saved, "epochz": 3}))
    with pytest.raises(ValueError, match="schema_version 99 is newer"):
        parse_record(json.dumps({**saved, "schema_version": 99}))
    with pytest.raises(ValueError, match="unknown mode 'best'"):
        parse_record(json.dumps({**saved, "mode": "best"}))
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_record('{"name": ')
    assert read_record(tmp_path / "none") is None


def test_damaged_result_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    lines = ['{"epoch": 1, "val_loss": 1.0}', "garbage", "[1, 2]", '{"epoch": 2, "val_loss": 0.5}']
    (tmp_path / "result.json").write_text("\n".join(lines) + '\n{"epoch": 3, "val_l')
    results = read_results(tmp_path)
    # The lines after a damaged one are kept; the torn last line is counted too.
    assert [r["epoch"] for r in results.rows] == [1, 2]
    assert results.damaged == 3


def test_a_repeated_epoch_keeps_its_last_report() -> None:
    rows = [{"epoch": 1, "v": 1}, {"epoch": 2, "v": 2}, {"epoch": 1, "v": 3}]
    assert epoch_rows(rows) == {1: {"epoch": 1, "v": 3}, 2: {"epoch": 2, "v": 2}}
    # Without an epoch column Ray's training_iteration, then the position, stands in.
    assert list(epoch_rows([{"training_iteration": 5}, {}])) == [2, 5]


def test_is_better_never_lets_nan_win() -> None:
    assert is_better(0.5, 0.4, "max") and is_better(0.4, 0.5, "min")
    assert not is_better(math.nan, 0.1, "max") and is_better(0.1, math.nan, "min")


def test_ray_state_gives_trial_ids_dirs_and_statuses(tmp_path: Path) -> None:
    trial = {"trial_id": "a_1", "relative_logdir": "trial_a_1", "status": "RUNNING"}
    state = {"trial_data": [[json.dumps(trial), "{}"]]}
    (tmp_path / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps(state))
    (tmp_path / "experiment_state-2025-01-01_00-00-00.json").write_text("{torn")
    [only] = read_ray_states(tmp_path)  # the newest file, by its sortable name
    assert (only.trial_id, only.dir_name, only.status) == ("a_1", "trial_a_1", "RUNNING")
    torn = tmp_path / "experiment_state-2027-01-01_00-00-00.json"
    torn.write_text(json.dumps(state)[:20])
    with pytest.raises(ValueError, match=f"^{re.escape(str(torn))}: Ray's saved experiment st"):
        read_ray_states(tmp_path)  # the newest is torn: named, never read past


def _trial(exp: Path, dirname: str, trial_id: str, losses: list[float], weights: Path) -> None:
    """A trial as Ray leaves it: params.json, result.json and one checkpoint per epoch."""
    d = exp / dirname
    d.mkdir(parents=True)
    (d / "params.json").write_text(json.dumps(CFG.to_dict()))
    rows = []
    for epoch, loss in enumerate(losses, start=1):
        name = f"checkpoint_{epoch - 1:06d}"
        (d / name).mkdir()
        os.link(weights, d / name / "checkpoint.pt")  # same weights: only the choice matters
        rows.append(
            {"epoch": epoch, "val_loss": loss, "trial_id": trial_id, "checkpoint_dir_name": name}
        )
    (d / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows) + "{torn")


@pytest.fixture
def tied_experiment(tmp_path: Path) -> Path:
    """Two trials tied at val_loss 0.5 on epochs 2 and 3. The directory order (trial_bbb first)
    and the trial-id order (aaa, in directory trial_zzz, first) disagree on purpose: the rules
    before this module picked trial_bbb in search.export and aaa in analysis."""
    model = build_model(CFG, num_classes=len(CLASSES))
    weights = tmp_path / "weights.pt"
    state = {"config": CFG.to_dict(), "classes": CLASSES, "epoch": 1, "history": []}
    torch.save({**state, "model": model.state_dict()}, weights)
    exp = tmp_path / "exp"
    _trial(exp, "trial_bbb", "bbb", [0.9, 0.5, 0.5], weights)
    _trial(exp, "trial_zzz", "aaa", [0.8, 0.5, 0.5, math.nan], weights)
    write_record(exp, _record(name="exp", num_samples=2))
    return exp


def test_ties_go_to_the_better_value_then_earlier_epoch_then_trial_id(tied_experiment) -> None:
    best = best_checkpoint(tied_experiment, "val_loss", "min")
    assert (best.trial_id, best.epoch, best.checkpoint_dir.name) == ("aaa", 2, "checkpoint_000001")
    scored = trial_checkpoints(tied_experiment / "trial_zzz", "val_loss")
    assert [c.epoch for c in scored] == [1, 2, 3]  # epoch 4 reported NaN: never a candidate
    keys = sorted(rank_key(c, "min") for c in scored)
    assert keys[0] == (0.5, 2, "aaa")
    with pytest.raises(ValueError, match="unknown mode"):
        best_checkpoint(tied_experiment, "val_loss", "lowest")


def test_export_and_report_choose_the_same_checkpoint_on_a_tie(tied_experiment, tmp_path) -> None:
    from analysis.load import load_experiment
    from search.export import export_best

    exp = load_experiment(tied_experiment)
    best_trial = exp.best_trial()  # what analysis.report calls the best trial
    out = export_best(tied_experiment, tmp_path / "bundle")  # metric and mode from the record
    source = json.loads((out / "bundle.json").read_text())["source"]
    assert (best_trial.trial_id, best_trial.best_epoch) == ("aaa", 2)
    assert source["trial"] == best_trial.path.name == "trial_zzz"
    assert source["checkpoint"] == best_trial.best_checkpoint.name == "checkpoint_000001"
    assert source["trial_id"] == "aaa" and source["value"] == best_trial.best_score == 0.5
    # summary.json's best is the same checkpoint (it used Ray's ranking, which knows no tie rule).
    from search.summary import best_epoch

    record = dataclasses.replace(read_record(tied_experiment), path=str(tied_experiment))
    best = best_epoch(None, record)
    assert (best["trial_id"], best["epoch"], best["checkpoint"]) == ("aaa", 2, source["checkpoint"])
    assert best["value"] == source["value"] and best["path"] == str(best_trial.path)
    # The torn last lines were skipped, counted, and listed in words.
    assert all(t.damaged_rows == 1 for t in exp.trials)
    assert sum("damaged result.json line" in m for m in exp.missing) == 2


def test_the_experiment_module_imports_no_search_library() -> None:
    import subprocess
    import sys

    code = (
        "import sys, trainables.experiment; "
        "print(','.join(m for m in ('ray', 'optuna', 'wandb', 'torch') if m in sys.modules))"
    )
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo)
    assert out.returncode == 0, out.stderr
    # Plain JSON and files: search/ and analysis/ both import it; torch only when a checkpoint
    # that no result row names has to be opened.
    assert out.stdout.strip() == ""


@pytest.mark.parametrize(
    ("status", "epochs", "max_epochs", "raised", "expected"),
    [
        ("TERMINATED", 4, 4, False, COMPLETED),  # trained every epoch
        ("TERMINATED", 2, 4, False, STOPPED),  # ASHA or the time budget cut it short
        ("TERMINATED", 0, 4, False, STOPPED),  # Ray ended it before its first report
        ("ERROR", 4, 4, False, ERRORED),  # Ray's word wins over the epochs
        ("TERMINATED", 4, 4, True, COMPLETED),  # retried after an error, then finished
        ("RUNNING", 4, 4, False, UNFINISHED),  # a resume continues it
        ("PENDING", 0, 4, False, UNFINISHED),
        ("PAUSED", 2, 4, False, UNFINISHED),
        (None, 2, 4, True, ERRORED),  # no Ray state: error.txt or Ray's failed flag decides
        (None, 4, 4, False, COMPLETED),
        (None, 2, 4, False, STOPPED),  # files alone: short of its epochs counts as stopped
        (None, 0, 4, False, UNFINISHED),  # nothing reported yet
        (None, 3, None, False, STOPPED),  # target unknown: never called completed
        ("TERMINATED", 5, 4, False, COMPLETED),  # a space that lowered MAX_EPOCHS on resume
    ],
)
def test_trial_outcome_is_decided_once_for_every_case(status, epochs, max_epochs, raised, expected):
    assert trial_outcome(status, epochs, max_epochs, raised) == expected
