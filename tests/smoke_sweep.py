"""The session's shared smoke sweep (`smoke_sweep` in tests/conftest.py): one CLI sweep that the
tests which only read a sweep's results share, instead of each starting its own Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMOKE_KEY = "0123456789abcdef0123456789abcdef01234567"  # a fake W&B API key
SMOKE_TRIALS = 6


def run_smoke_sweep(base: Path) -> dict:
    """One CLI sweep over a copy of spaces/smoke.py (tests/search/test_sweep.py's resume tests
    edit it): SMOKE_TRIALS trials of 3 epochs, 2 at a time, W&B offline with a fake key,
    exported to a folder of the user's choice (--export)."""
    from trainables.experiment import read_results, trial_dirs

    storage, bundle, space = base / "runs", base / "my bundle", base / "smoke.py"
    space.write_text((REPO / "spaces" / "smoke.py").read_text())
    env = {
        **os.environ,
        "WANDB_API_KEY": SMOKE_KEY,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "disabled",
    }
    command = [
        sys.executable, "-m", "search.run", "--space", str(space), "--export", str(bundle),
        "--storage", str(storage), "--name", "smoke", "--num-samples", str(SMOKE_TRIALS),
        "--max-concurrent", "2", "--wandb-mode", "offline", "--seed", "0",
    ]  # fmt: skip
    proc = subprocess.run(
        command,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    exp = storage / "smoke"
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((exp / "summary.json").read_text())
    rows = {d.name.removeprefix("trial_"): read_results(d).rows for d in trial_dirs(exp)}
    return {
        "proc": proc,
        "exp": exp,
        "summary": summary,
        "rows": rows,
        "bundle": bundle,
        "space": space,
        "storage": storage,
    }
