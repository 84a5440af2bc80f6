"""W&B settings and secrets (search.tracking): W&B's own mode rule, what never reaches a file,
and the summary fields a trial's run ends with."""

from __future__ import annotations

import pytest

from search.tracking import excluded_keys, outcome, run_summary, scrub
from trainables.experiment import wandb_mode, wandb_sync_command


@pytest.fixture
def no_wandb_env(monkeypatch, tmp_path):
    """No key, no WANDB_MODE, and a netrc of our own (never the user's ~/.netrc)."""
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DISABLED", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    netrc = tmp_path / "netrc"
    monkeypatch.setenv("NETRC", str(netrc))
    return netrc


def test_wandb_mode_follows_wandbs_own_rule(no_wandb_env, monkeypatch) -> None:
    # Nothing configured: offline.
    assert wandb_mode(None) == "offline"
    # A key from `wandb login` (its netrc entry for the W&B host) means online ...
    no_wandb_env.write_text("machine api.wandb.ai\n  login user\n  password " + "n" * 40 + "\n")
    no_wandb_env.chmod(0o600)
    assert wandb_mode(None) == "online"
    # ... but only for the host W&B talks to.
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")
    assert wandb_mode(None) == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert wandb_mode(None) == "online"
    # WANDB_MODE beats a configured key (the Makefile's `WANDB_MODE ?= offline`), and the
    # flag beats WANDB_MODE.
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_mode(None) == "offline"
    assert wandb_mode("disabled") == "disabled"
    monkeypatch.setenv("WANDB_MODE", "dryrun")  # W&B's old word for offline
    assert wandb_mode(None) == "offline"


def test_a_bad_wandb_mode_names_its_source_and_the_choices(no_wandb_env, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(ValueError, match=r"WANDB_MODE: unknown W&B mode 'sometimes'.*offline"):
        wandb_mode(None)
    with pytest.raises(ValueError, match="--wandb-mode"):
        wandb_mode("never")


def test_wandb_disabled_env_disables(no_wandb_env, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    monkeypatch.setenv("WANDB_DISABLED", "true")
    assert wandb_mode(None) == "disabled"


def test_the_key_never_reaches_a_file(monkeypatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    # The key never reaches a file the sweep writes, under any field name.
    assert scrub({"note": "k" * 40, "wandb_api_key": "x", "seed": 1}) == {"seed": 1}


def test_scrub_drops_key_named_fields_and_values_holding_the_key(monkeypatch) -> None:
    secret = "s" * 40
    monkeypatch.setenv("WANDB_API_KEY", secret)
    values = {"My_Api_Key": "x", "note": f"key={secret}", "seed": 1, "path": "/runs"}
    # Any field whose name contains api_key (any case) and any value holding the key go.
    assert scrub(values) == {"seed": 1, "path": "/runs"}
    # What W&B's callback leaves out: exactly these field names (its comment says so).
    assert excluded_keys() == ["api_key", "wandb_api_key", "WANDB_API_KEY"]


def test_run_summary_holds_the_best_epoch_by_the_sweeps_rule() -> None:
    rows = [
        {"epoch": 1, "val_loss": 0.9, "val_acc": 0.4, "time_total_s": 3.0},
        {"epoch": 2, "val_loss": 0.5, "val_acc": 0.7},
        {"epoch": 3, "val_loss": float("nan"), "val_acc": 0.8},  # NaN never wins
        {"epoch": 4, "val_loss": 0.5, "val_acc": 0.6},  # a tie: the earlier epoch wins
    ]
    summary = run_summary(rows, "val_loss", "min", outcome(4, 4, failed=False))
    # The best epoch's own row (not the last epoch's), only the split metrics, plus the end.
    assert summary["best_epoch"] == 2
    assert summary["best"] == {"epoch": 2, "val_loss": 0.5, "val_acc": 0.7}
    assert summary["stopped_early"] is False and summary["epochs"] == 4
    by_max = run_summary(rows, "val_acc", "max", None)
    assert by_max["best_epoch"] == 3 and by_max["best"]["val_acc"] == 0.8


def test_outcome_tags_stopped_errored_and_completed_trials() -> None:
    assert outcome(1, 3, failed=False) == {
        "tag": "stopped_early",
        "stopped_early": True,
        "stop_epoch": 1,
        "epochs": 1,
    }
    assert outcome(3, 3, failed=False)["tag"] == "completed"
    assert outcome(2, 3, failed=True)["tag"] == "error"


def test_wandb_sync_command_points_at_every_offline_run_of_the_experiment(tmp_path) -> None:
    assert wandb_sync_command(tmp_path) == f"wandb sync {tmp_path}/wandb/offline-run-*"
