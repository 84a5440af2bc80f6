"""A trial that ends after one epoch keeps its whole W&B run, even when the sweep ends at once
after it and waits for nothing more (a loaded machine's slow run start, at the limit)."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import ray
from ray import cloudpickle, tune
from wandb_log import final_run, final_summary, records_of

from search import tracking
from search.wandb_callback import wandb_callback

pytestmark = pytest.mark.slow

# Ray workers cannot import this test module: ship the trainable by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _one_epoch(config):
    tune.report({"val_loss": 0.5 + config["x"], "epoch": 1})


@pytest.fixture
def local_ray():
    temp = tempfile.mkdtemp(prefix="r", dir="/tmp")
    ray.init(
        num_cpus=1,
        object_store_memory=100 * 2**20,
        include_dashboard=False,
        _temp_dir=temp,
        log_to_driver=False,
    )
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def test_a_one_epoch_trial_keeps_its_whole_run_when_the_sweep_ends_right_after(
    local_ray, tmp_path: Path, monkeypatch, capfd
) -> None:
    for var in ("CACHE", "CONFIG", "DATA"):
        monkeypatch.setenv(f"WANDB_{var}_DIR", str(tmp_path / "wandb-home" / var.lower()))
    monkeypatch.delenv("WANDB_SILENT", raising=False)  # as a user's shell has it
    monkeypatch.setenv("WANDB_MODE", "offline")
    # The sweep's end waits for no run: whatever the end of a trial did not finish is cut.
    monkeypatch.setitem(tracking.UPLOAD_TIMEOUT, "offline", 0)
    runs = tmp_path / "runs"
    callback = wandb_callback(
        "p", "g", "offline", runs, metric="val_loss", metric_mode="min", max_epochs=3
    )
    tune.Tuner(
        _one_epoch,
        param_space={"x": 0.0},
        run_config=tune.RunConfig(
            name="w", storage_path=str(tmp_path / "storage"), callbacks=[callback], verbose=0
        ),
    ).fit()
    [run_file] = runs.glob("wandb/offline-run-*/run-*.wandb")
    summary = {k: json.loads(v) for k, v in final_summary(run_file).items()}
    assert summary["val_loss"] == {"min": 0.5}
    # Finished: the trial's outcome is in its tags and summary, and W&B wrote its exit.
    assert "stopped_early" in final_run(run_file).tags and summary["stop_epoch"] == 1
    assert records_of(run_file, "exit")
    # The driver's runs print nothing between the sweep's progress lines.
    out = capfd.readouterr()
    assert not [line for line in (out.out + out.err).splitlines() if line.startswith("wandb:")]


def test_an_unreachable_server_costs_one_init_timeout_and_the_runs_are_written_offline(
    local_ray, tmp_path: Path, monkeypatch, capfd
) -> None:
    for var in ("CACHE", "CONFIG", "DATA"):
        monkeypatch.setenv(f"WANDB_{var}_DIR", str(tmp_path / "wandb-home" / var.lower()))
    monkeypatch.setenv("WANDB_API_KEY", "f" * 40)  # a fake key: nothing is sent anywhere
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens on port 9
    monkeypatch.setattr(tracking, "INIT_TIMEOUT", 2.0)
    runs = tmp_path / "runs"
    callback = wandb_callback(
        "p", "g", "online", runs, metric="val_loss", metric_mode="min", max_epochs=1
    )
    tune.Tuner(
        _one_epoch,
        param_space={"x": tune.grid_search([0.0, 1.0])},
        run_config=tune.RunConfig(
            name="w", storage_path=str(tmp_path / "storage"), callbacks=[callback], verbose=0
        ),
    ).fit()
    err = capfd.readouterr().err
    assert err.count("W&B: cannot reach the server") == 1  # one timeout, not one per trial
    assert "wandb sync" in err and "f" * 40 not in err
    run_files = sorted(runs.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(run_files) == 2  # both trials' runs, offline
    for run_file in run_files:
        assert "completed" in final_run(run_file).tags and records_of(run_file, "exit")
