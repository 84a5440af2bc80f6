"""Multi-seed re-runs (search.rerun): a real sweep, then a second Ray run of its top 2
configurations x 2 seeds, read back by analysis.reruns."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from analysis.document import Document
from analysis.load import load_experiment
from analysis.reruns import load_rerun, rerun_section
from trainables.experiment import ranked_trials, read_rerun_plan, rerun_dir

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
SPACE = """
METRIC = "val_loss"
MODE = "min"
MAX_EPOCHS = 2
GRACE_PERIOD = 2
NUM_SAMPLES = 3


def define(trial):
    trial.suggest_float("lr", 1e-4, 1e-2, log=True)
    return {"model": "simple_cnn_10m", "image_size": 32, "batch_size": 16, "max_train_batches": 2}
"""

pytestmark = pytest.mark.slow


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=500,
    )


@pytest.fixture(scope="module")
def rerun(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("rerun")
    (root / "tiny.py").write_text(SPACE)
    storage = root / "runs"
    sweep = cli(
        "search.run",
        "--space",
        str(root / "tiny.py"),
        "--storage",
        str(storage),
        "--name",
        "exp",
        "--num-samples",
        "3",
        "--no-export",
        "--wandb-mode",
        "disabled",
    )
    assert sweep.returncode == 0, sweep.stdout[-3000:] + sweep.stderr[-3000:]
    proc = cli(
        "search.rerun",
        "--name",
        "exp",
        "--storage",
        str(storage),
        "--top",
        "2",
        "--seeds",
        "2",
        "--max-concurrent",
        "2",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"exp": storage / "exp", "storage": storage, "proc": proc}


def test_rerun_trains_the_top_two_configurations_with_two_new_seeds(rerun) -> None:
    exp = rerun["exp"]
    folder = rerun_dir(exp, "top2-seeds2")
    plan = read_rerun_plan(folder)
    ranked = ranked_trials(exp, "val_loss", "min")
    # The plan takes the sweep's own ranking (the report's and export's order), best first.
    assert [c["trial_id"] for c in plan.configs] == [c.trial_id for c in ranked[:2]]
    assert plan.seeds == [1, 2]  # the sweep ran seed 0
    params = [json.loads(p.read_text()) for p in sorted(folder.glob("trial_*/params.json"))]
    # 2 configurations x 2 seeds, each the source trial's config with only the seed changed.
    assert len(params) == 4
    got = sorted((p["lr"], p["seed"]) for p in params)
    want = sorted((c["params"]["lr"], s) for c in plan.configs for s in (1, 2))
    assert got == want
    # Every re-run trial trained all epochs (no early stopping).
    for d in folder.glob("trial_*"):
        rows = [json.loads(line) for line in (d / "result.json").read_text().splitlines()]
        assert [r["epoch"] for r in rows] == [1, 2]
    # The sweep's own loader still sees only the sweep's trials.
    assert len(load_experiment(exp).trials) == 3


def test_rerun_scores_match_the_trials_files_and_reach_the_report(rerun, tmp_path) -> None:
    folder = rerun_dir(rerun["exp"], "top2-seeds2")
    plan, scores = load_rerun(folder)
    assert [s.rank for s in scores] == [1, 2] and all(len(s.values) == 2 for s in scores)
    # Independent read: each trial's best (lowest) val_loss over epochs that kept a checkpoint
    # (Ray keeps the best two and the latest; two epochs here, so all).
    expected = {}
    for d in folder.glob("trial_*"):
        p = json.loads((d / "params.json").read_text())
        rows = [json.loads(line) for line in (d / "result.json").read_text().splitlines()]
        expected[(p["lr"], p["seed"])] = min(r["val_loss"] for r in rows)
    for s in scores:
        for seed, value in zip(s.seeds, s.values, strict=True):
            assert value == pytest.approx(expected[(s.params["lr"], seed)])
    doc, t = Document(tmp_path), {}
    rerun_section(doc, load_experiment(rerun["exp"]), t)
    text = doc.markdown()
    assert "Multi-seed re-runs" in text and "ranking of its top 2 configurations" in text
    assert "| mean | ci95_lower | ci95_upper |" in text  # the interval reaches the page
    assert list(t["rerun_top2-seeds2"]["seeds"]) == [2, 2]


def test_rerun_refuses_bad_requests_before_starting_ray(rerun) -> None:
    storage = str(rerun["storage"])
    too_many = cli(
        "search.rerun", "--name", "exp", "--storage", storage, "--top", "5", "--seeds", "2"
    )
    assert too_many.returncode == 2 and "has only 3 trial(s)" in too_many.stderr
    again = cli("search.rerun", "--name", "exp", "--storage", storage, "--top", "2", "--seeds", "2")
    assert again.returncode == 2 and "never overwritten" in again.stderr
    missing = cli(
        "search.rerun", "--name", "nope", "--storage", storage, "--top", "1", "--seeds", "1"
    )
    assert missing.returncode == 2 and "no finished sweep" in missing.stderr
