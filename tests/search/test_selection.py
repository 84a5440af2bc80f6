"""Noise-aware selection (trainables.selection): the export is the best mean over a re-run's
seeds, its closest-to-mean seed; without a re-run the bundle says it is a single run. The sweep
records --select-top/--select-seeds and a resume keeps them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from trainables.config import TrialConfig
from trainables.experiment import RerunPlan, best_checkpoint, rerun_dir, write_rerun_plan
from trainables.models import build_model

CLASSES = ["normal", "bacteria", "viral"]
# data that is not here: the export skips calibration (fast) and says so
CFG = TrialConfig(
    model="simple_cnn_10m", image_size=32, augment="none", weights="none", data="/nonexistent"
)
LRS = {"a": 1e-3, "b": 3e-3, "c": 1e-2}
SWEEP = {"a": [0.70, 0.90], "b": [0.80, 0.85], "c": [0.60, 0.82]}  # val_acc per epoch
# re-run scores per seed (each trial's best epoch): a's sweep epoch was lucky, b is better
RERUN = {
    "a": {1: [0.60, 0.70], 2: [0.72], 3: [0.68]},
    "b": {1: [0.80], 2: [0.70, 0.74], 3: [0.78]},
    "c": {1: [0.60], 2: [0.62], 3: [0.61]},
}


def _params(name: str, seed: int = 0) -> dict:
    return {**CFG.to_dict(), "lr": LRS[name], "seed": seed}


def _trial(parent: Path, dirname: str, params: dict, values: list[float], weights: Path) -> None:
    """A trial as Ray leaves it: params.json, result.json and one checkpoint per epoch."""
    d = parent / dirname
    d.mkdir(parents=True)
    (d / "params.json").write_text(json.dumps(params))
    rows = []
    for epoch, value in enumerate(values, start=1):
        name = f"checkpoint_{epoch - 1:06d}"
        (d / name).mkdir()
        os.link(weights, d / name / "checkpoint.pt")
        rows.append(
            {
                "epoch": epoch,
                "val_acc": value,
                "trial_id": dirname.removeprefix("trial_"),
                "checkpoint_dir_name": name,
            }
        )
    (d / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("selection") / "weights.pt"
    model = build_model(CFG, num_classes=len(CLASSES))
    state = {"config": CFG.to_dict(), "classes": CLASSES, "epoch": 1, "history": []}
    torch.save({**state, "model": model.state_dict()}, path)
    return path


@pytest.fixture
def experiment(tmp_path, weights) -> Path:
    """A finished sweep of three configurations, without a re-run (hard links: no copies)."""
    exp = tmp_path / "exp"
    for name, values in SWEEP.items():
        _trial(exp, f"trial_{name}", _params(name), values, weights)
    return exp


def _add_rerun(exp: Path, name: str, created: str, seeds=(1, 2, 3), missing=()) -> Path:
    weights = next(exp.glob("trial_a/checkpoint_*/checkpoint.pt"))
    ranked = ["a", "b", "c"]  # the sweep's order by best epoch: 0.90, 0.85, 0.82
    plan = RerunPlan(
        name=name,
        metric="val_acc",
        mode="max",
        seeds=list(seeds),
        configs=[
            {"rank": i + 1, "trial_id": c, "value": max(SWEEP[c]), "params": _params(c)}
            for i, c in enumerate(ranked)
        ],
        source=str(exp),
        created=created,
    )
    folder = rerun_dir(exp, name)
    write_rerun_plan(folder, plan)
    for c in ranked:
        for seed in seeds:
            if (c, seed) not in missing:
                _trial(folder, f"trial_{c}{seed}", _params(c, seed), RERUN[c][seed], weights)
    return folder


@pytest.mark.slow  # two ONNX exports of a 10M-parameter model
def test_without_a_rerun_the_bundle_says_single_run(experiment, tmp_path, capsys) -> None:
    from search.export import main
    from trainables.selection import SINGLE_RUN, choose_checkpoint

    best, selection = choose_checkpoint(experiment, "val_acc", "max")
    assert selection["by"] == SINGLE_RUN
    assert best == best_checkpoint(experiment, "val_acc", "max")
    assert (best.trial_dir.name, best.value) == ("trial_a", 0.90)
    out = tmp_path / "bundle"
    assert main([str(experiment), "--out", str(out), "--metric", "val_acc", "--mode", "max"]) == 0
    assert "selection: single run (no re-run)" in capsys.readouterr().out
    meta = json.loads((out / "bundle.json").read_text())
    assert meta["selection"]["by"] == SINGLE_RUN and meta["source"]["trial"] == "trial_a"
    assert "Selection: single run (no re-run)" in (out / "MODEL_CARD.md").read_text()


@pytest.mark.slow
def test_export_picks_the_best_mean_and_its_closest_to_mean_seed(
    experiment, tmp_path, capsys
) -> None:
    from analysis.reruns import rerun_table
    from search.export import main
    from trainables.selection import load_rerun

    _add_rerun(experiment, "old", "2026-01-01T00:00:00+00:00", missing={("b", 3)})
    folder = _add_rerun(experiment, "new", "2026-02-01T00:00:00+00:00")
    _add_rerun(experiment, "newest-incomplete", "2026-03-01T00:00:00+00:00", missing={("a", 1)})
    # independently: each seed's best epoch, the means, the t interval, the closest seed
    scores = {c: {s: max(v) for s, v in by_seed.items()} for c, by_seed in RERUN.items()}
    means = {c: float(np.mean(list(v.values()))) for c, v in scores.items()}
    winner = max(means, key=means.get)
    seed = min(scores[winner], key=lambda s: abs(scores[winner][s] - means[winner]))
    values = np.array(list(scores[winner].values()))
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    assert winner == "b" and seed == 3  # not the sweep's best trial (a), nor b's best seed (1)
    out = tmp_path / "bundle"
    assert main([str(experiment), "--out", str(out), "--metric", "val_acc", "--mode", "max"]) == 0
    assert "selection: mean over 3 seeds (re-run new)" in capsys.readouterr().out
    meta = json.loads((out / "bundle.json").read_text())
    sel, src = meta["selection"], meta["source"]
    assert src["trial"] == "trial_b3" and src["value"] == pytest.approx(scores["b"][3])
    assert sel["by"] == "mean over 3 seeds" and sel["rerun"] == "new"
    assert sel["mean"] == pytest.approx(means["b"]) and sel["exported_seed"] == 3
    assert sel["interval"]["low"] == pytest.approx(means["b"] - half)
    assert sel["interval"]["high"] == pytest.approx(means["b"] + half)
    assert sel["runner_up"]["sweep_rank"] == 1 and sel["runner_up"]["mean"] == pytest.approx(
        means["a"]
    )
    assert sel["separated"] is False  # b's and a's intervals overlap at three seeds
    assert any("newest-incomplete is incomplete" in n for n in sel["notes"])
    assert "mean over 3 seeds" in (out / "MODEL_CARD.md").read_text()
    # the report's table is computed by the same rule (one function for both)
    plan, rerun_scores = load_rerun(folder)
    table = rerun_table(plan, rerun_scores).set_index("sweep_rank")
    assert table.loc[2, "mean"] == pytest.approx(sel["mean"])
    assert table.loc[2, "ci95_lower"] == pytest.approx(sel["interval"]["low"])


def test_select_flags_follow_the_profile_are_recorded_and_kept_on_resume(tmp_path) -> None:
    from search.checks import resume_changes
    from search.cli import CPU_PROFILE, FULL_PROFILE, build_parser, selection_of
    from trainables.experiment import ExperimentRecord, read_record, write_record

    parser = build_parser()

    def parse(*flags: str):
        return parser.parse_args(["--space", "smoke", *flags])

    assert selection_of(parse(), CPU_PROFILE) == (0, 0)  # off on a laptop's make run
    assert selection_of(parse(), FULL_PROFILE) == (3, 3)
    assert selection_of(parse("--select-top", "2"), CPU_PROFILE) == (2, 3)
    assert selection_of(parse("--select-seeds", "5"), CPU_PROFILE) == (3, 5)
    assert selection_of(parse("--select-top", "0"), FULL_PROFILE) == (0, 0)
    with pytest.raises(SystemExit):
        parse("--select-seeds", "0")
    args = parse("--select-top", "2", "--select-seeds", "4")
    record = ExperimentRecord(
        name="x", metric="val_acc", mode="max", select_top=2, select_seeds=4, args=vars(args)
    )
    write_record(tmp_path, record)
    kept = read_record(tmp_path)
    assert (kept.select_top, kept.select_seeds) == (2, 4)
    assert resume_changes(parser, parse("--resume"), kept) == (None, None)
    assert resume_changes(parser, parse("--resume", "--select-top", "2"), kept) == (None, None)
    refusal, _ = resume_changes(parser, parse("--resume", "--select-seeds", "9"), kept)
    assert refusal and "--select-seeds 9 (the experiment has 4)" in refusal
    # a full-profile sweep that took the profile's default: the message names what it ran with
    full = ExperimentRecord(name="y", metric="val_acc", mode="max", select_top=3, select_seeds=3)
    refusal, _ = resume_changes(parser, parse("--resume", "--select-top", "1"), full)
    assert refusal and "--select-top 1 (the experiment has 3)" in refusal


def test_a_finished_sweep_resumed_keeps_its_complete_selection_rerun(experiment, capsys) -> None:
    """The resumed sweep's finish step finds the re-run it made before and starts no Ray run."""
    from search.rerun import select_after_sweep
    from trainables.experiment import ExperimentRecord

    _add_rerun(experiment, "select-top3-seeds3", "2026-02-01T00:00:00+00:00")
    record = ExperimentRecord(
        name="exp", metric="val_acc", mode="max", path=str(experiment),
        storage=str(experiment.parent), select_top=3, select_seeds=3, args={"seed": 0},
    )  # fmt: skip
    assert select_after_sweep(record) is None
    assert "already covers these configurations and seeds" in capsys.readouterr().out
    assert sorted(p.name for p in (experiment / "reruns").iterdir()) == ["select-top3-seeds3"]
    off = ExperimentRecord(name="exp", metric="val_acc", mode="max", path=str(experiment))
    assert select_after_sweep(off) is None  # --select-top 0: nothing to do
