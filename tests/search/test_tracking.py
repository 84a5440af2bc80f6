"""W&B settings and secrets (search.tracking): the mode default and what never reaches a file."""

from __future__ import annotations

from search.tracking import excluded_keys, resolve_mode, scrub


def test_wandb_mode_defaults_to_offline_without_an_api_key(monkeypatch) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert resolve_mode(None) == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert resolve_mode(None) == "online"
    assert resolve_mode("disabled") == "disabled"
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
