"""Test-wide settings: offline W&B, no Ray telemetry, one shared phantom cache per checkout; the
session's shared smoke sweep."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from smoke_sweep import run_smoke_sweep

REPO = Path(__file__).resolve().parents[1]

os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
# Generated phantoms and decoded arrays are reused across test modules (and CI steps); tests that
# need a cold cache point CXR_TUNE_CACHE at their own tmp_path.
os.environ.setdefault("CXR_TUNE_CACHE", str(REPO / ".cache" / "test-cache"))


@pytest.fixture(scope="session")
def smoke_sweep(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`smoke_sweep.run_smoke_sweep`, once per session: tests that only read it share it, and a
    test that changes files works on a copy."""
    return run_smoke_sweep(tmp_path_factory.mktemp("sweep"))
