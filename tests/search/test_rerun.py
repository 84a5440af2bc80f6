"""Multi-seed re-runs (search.rerun): a real sweep with --select-top 2 --select-seeds 2, whose
finish step runs the second Ray run of its top 2 configurations x 2 seeds (search.rerun's plan
and run) before the export chooses by the mean; read back by analysis.reruns. The command
line's refusals are checked against the same experiment."""

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
NAME = "select-top2-seeds2"  # the re-run the sweep's --select-top 2 --select-seeds 2 makes


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
        "--select-top",
        "2",
        "--select-seeds",
        "2",
        "--wandb-mode",
        "disabled",
    )
    assert sweep.returncode == 0, sweep.stdout[-3000:] + sweep.stderr[-3000:]
    return {"exp": storage / "exp", "storage": storage, "sweep": sweep}


def test_the_sweep_selects_by_the_mean_over_seeds_before_export(rerun) -> None:
    """--select-top 2 --select-seeds 2: the finished sweep re-ran its top 2 with 2 seeds and
    exported the best mean's closest-to-mean seed (trainables.selection, checked on its own
    in tests/search/test_selection.py)."""
    from trainables.selection import load_rerun, select

    exp, out = rerun["exp"], rerun["sweep"].stdout
    record = json.loads((exp / "cxr_tune.json").read_text())
    assert (record["select_top"], record["select_seeds"]) == (2, 2)
    assert "selection: after the sweep, its top 2 configurations re-run" in out
    folder = rerun_dir(exp, NAME)
    plan, scores = load_rerun(folder)
    assert all(s.seeds == [1, 2] for s in scores)
    chosen = select(plan, folder, scores)
    meta = json.loads((exp / "export" / "bundle.json").read_text())
    assert meta["selection"]["rerun"] == "select-top2-seeds2"
    assert meta["source"]["trial"] == chosen.checkpoint.trial_dir.name
    assert "headline selection: mean over 2 seeds (re-run select-top2-seeds2)" in out


def test_rerun_trains_the_top_two_configurations_with_two_new_seeds(rerun) -> None:
    exp = rerun["exp"]
    folder = rerun_dir(exp, NAME)
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
    folder = rerun_dir(rerun["exp"], NAME)
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
    assert "| mean | ci95\\_lower | ci95\\_upper |" in text  # the interval reaches the page
    assert list(t[f"rerun_{NAME}"]["seeds"]) == [2, 2]


def test_rerun_refuses_bad_requests_before_starting_ray(rerun) -> None:
    storage = str(rerun["storage"])
    too_many = cli(
        "search.rerun", "--name", "exp", "--storage", storage, "--top", "5", "--seeds", "2"
    )
    assert too_many.returncode == 2 and "has only 3 trial(s)" in too_many.stderr
    again = cli(
        "search.rerun", "--name", "exp", "--storage", storage, "--top", "2", "--seeds", "2",
        "--rerun-name", NAME,
    )  # fmt: skip
    assert again.returncode == 2 and "never overwritten" in again.stderr
    missing = cli(
        "search.rerun", "--name", "nope", "--storage", storage, "--top", "1", "--seeds", "1"
    )
    assert missing.returncode == 2 and "no finished sweep" in missing.stderr
