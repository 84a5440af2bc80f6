"""Multi-seed re-runs of a finished sweep's top configurations (Zech et al. 2019: at this data
scale one seed's ranking can be noise).

    cxr-tune rerun --name EXPERIMENT --top K --seeds N [--storage runs] [--rerun-name R]
    (or python -m search.rerun ...)

A second Ray Tune run with the product's trainable (`search.tuner`): the experiment's top K
configurations by its own ranking (`trainables.experiment.ranked_trials`, the order export and
the report use) times N new training seeds, every trial trained to the sweep's MAX_EPOCHS
(no early stopping), written to `EXPERIMENT/reruns/R/` with its plan (`RerunPlan`,
`rerun.json`). `cxr-tune report EXPERIMENT` then gives mean ± 95 % CI per
configuration and says whether the ranking of the top configurations holds across seeds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cxr_tune import exit_status, prog
from search import storage
from search.cli import _bounded, _name, refuse
from trainables.experiment import (
    ExperimentRecord,
    RerunPlan,
    ranked_trials,
    read_params,
    rerun_dir,
    write_rerun_plan,
)
from trainables.selection import newest_complete_rerun


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog("search.rerun"),
        description="Re-run a sweep's top configurations with new seeds (a second Ray Tune run).",
    )
    rerun = p.add_argument_group("multi-seed re-run")
    rerun.add_argument("--name", type=_name, required=True, help="the sweep's experiment name")
    rerun.add_argument("--storage", default="runs", help="the sweep's --storage (a local folder)")
    count = _bounded(int, 1, 1000, "an integer in [1, 1000]")
    rerun.add_argument("--top", type=count, required=True, help="configurations to re-run (K)")
    rerun.add_argument("--seeds", type=count, required=True, help="new seeds per config (N)")
    rerun.add_argument("--rerun-name", type=_name, help="default: topK-seedsN")
    rerun.add_argument("--max-concurrent", type=_bounded(int, 1, 10000, "an integer in [1, 10000]"))
    rerun.add_argument(
        "--cpus-per-trial", type=_bounded(float, 0.25, 256.0, "a number in [0.25, 256]")
    )
    return p


def plan_rerun(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple:
    """The record, the plan and its folder; every problem is a usage error before Ray starts."""
    if storage.is_uri(args.storage):
        refuse(f"--storage {args.storage}: re-runs need a local experiment folder")
    exp = Path(storage.experiment_path(str(Path(args.storage).resolve()), args.name))
    try:
        record = storage.read_record(str(exp))
    except ValueError as err:
        refuse(str(err))
    if record is None:
        refuse(f"--name {args.name}: {exp} holds no finished sweep (no experiment record)")
    name = args.rerun_name or f"top{args.top}-seeds{args.seeds}"
    try:
        plan, folder = plan_of(record, exp, args.top, args.seeds, name)
    except ValueError as err:
        refuse(str(err))
    return record, plan, folder


def plan_of(
    record: ExperimentRecord, exp: Path, top: int, seeds: int, name: str
) -> tuple[RerunPlan, Path]:
    """The re-run of `exp`'s `top` configurations with `seeds` new seeds, in the folder `name`;
    ValueError (naming the flag) when the sweep has fewer scored trials or the folder exists."""
    ranked = ranked_trials(exp, record.metric, record.mode)
    if len(ranked) < top:
        raise ValueError(
            f"--top {top}: {exp} has only {len(ranked)} trial(s) with a scored checkpoint"
        )
    folder = rerun_dir(exp, name)
    if folder.exists():
        raise ValueError(
            f"{folder} exists (a re-run is never overwritten); pass another --rerun-name"
        )
    configs = [
        {
            "rank": i + 1,
            "trial_id": c.trial_id,
            "value": c.value,
            "params": read_params(c.trial_dir),
        }
        for i, c in enumerate(ranked[:top])
    ]
    plan = RerunPlan(
        name=name,
        metric=record.metric,
        mode=record.mode,
        # New seeds: the sweep's own (record.seed) is already one draw of each configuration.
        seeds=[record.seed + 1 + i for i in range(seeds)],
        configs=configs,
        source=str(exp),
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )
    return plan, folder


def run_rerun(
    record: ExperimentRecord,
    plan: RerunPlan,
    folder: Path,
    max_concurrent: int | None = None,
    cpus_per_trial: float | None = None,
    verbose: bool = False,
):
    """The second Ray run: each planned configuration once per seed, all epochs, FIFO
    (concurrency and CPUs per trial default to the sweep's)."""
    from search.cluster import detect_gpus, local_ray
    from search.tuner import TunerSettings, build_tuner, make_trainable

    points = [{**c["params"], "seed": s} for c in plan.configs for s in plan.seeds]
    settings = TunerSettings(
        name=plan.name,
        storage=str(folder.parent),
        metric=plan.metric,
        mode=plan.mode,
        max_epochs=record.max_epochs or max(int(p.get("epochs", 1)) for p in points),
        num_samples=len(points),
        grace_period=1,
        reduction_factor=2,
        max_concurrent=max_concurrent or record.max_concurrent,
        seed=record.seed,
        search="points",
        asha=False,  # every seed trains to the end: the spread is the point
        points_to_evaluate=tuple(points),
        wandb_mode="disabled",
    )
    cpus = cpus_per_trial or record.cpus_per_trial
    _, card_bytes = detect_gpus(None)
    with local_ray(verbose):
        trainable = make_trainable(cpus, record.gpus_per_trial, card_bytes)
        tuner = build_tuner(settings, None, trainable, param_space=space_of(points))
        return tuner.fit()


def select_after_sweep(record: ExperimentRecord, verbose: bool = False) -> str | None:
    """Noise-aware selection at the end of a finished sweep (`record.select_top` > 0): re-run its
    top configurations with `record.select_seeds` new seeds in a new folder
    (select-topK-seedsN, never overwritten), so the export that follows chooses by the mean
    over seeds (`trainables.selection`). Returns a problem in words, None when it ran or is off;
    the export then says which rule chose its model."""
    if not record.select_top:
        return None
    if storage.is_uri(record.path):
        return "the re-run needs a local experiment folder"
    exp = Path(record.path)
    ranked = ranked_trials(exp, record.metric, record.mode)
    top = min(record.select_top, len(ranked))
    if top < 1:
        return "no trial has a scored checkpoint"
    base = f"select-top{top}-seeds{record.select_seeds}"
    name = next(
        n
        for n in (base, *(f"{base}-{i}" for i in range(2, 10000)))
        if not rerun_dir(exp, n).exists()
    )
    plan, folder = plan_of(record, exp, top, record.select_seeds, name)
    done, _ = newest_complete_rerun(exp, record.metric, record.mode)
    if done is not None and same_rerun(done.plan, plan):  # a resumed sweep that had finished
        print(f"selection: re-run {done.folder} already covers these configurations and seeds")
        return None
    write_rerun_plan(folder, plan)
    announce(record, plan, folder)
    grid = run_rerun(record, plan, folder, verbose=verbose)
    failed = [r for r in grid if r.error is not None]
    print(f"re-run finished: {len(grid) - len(failed)} trials ok, {len(failed)} failed", flush=True)
    return None


def same_rerun(a: RerunPlan, b: RerunPlan) -> bool:
    """The same configurations (by the sweep's trial ids, in order) and the same seeds."""
    ids = [c["trial_id"] for c in a.configs], [c["trial_id"] for c in b.configs]
    return ids[0] == ids[1] and list(a.seeds) == list(b.seeds) and a.metric == b.metric


def announce(record: ExperimentRecord, plan: RerunPlan, folder: Path) -> None:
    print(
        f"re-run {folder}: top {len(plan.configs)} configurations by {plan.metric} "
        f"({plan.mode}) x seeds {plan.seeds} = {len(plan.configs) * len(plan.seeds)} trials, "
        f"{record.max_epochs} epochs each, no early stopping",
        flush=True,
    )
    for c in plan.configs:
        print(f"  #{c['rank']} trial {c['trial_id']}: {plan.metric} {c['value']:.4f}", flush=True)


def space_of(points: list[dict[str, Any]]) -> dict[str, Any]:
    """The param space Ray's variant generator needs to take `points`: every key they name, a
    constant where they agree and a choice among their values where they differ (a constant
    that a point overrides draws a warning per trial)."""
    from ray import tune

    space: dict[str, Any] = {}
    for key in dict.fromkeys(k for p in points for k in p):
        values = []  # distinct values in order; lists (checkpoint_epochs) are not hashable
        for value in (p[key] for p in points if key in p):
            if value not in values:
                values.append(value)
        space[key] = values[0] if len(values) == 1 else tune.choice(values)
    return space


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    parser = build_parser()
    args = parser.parse_args(argv)
    record, plan, folder = plan_rerun(args, parser)
    write_rerun_plan(folder, plan)
    announce(record, plan, folder)
    grid = run_rerun(record, plan, folder, args.max_concurrent, args.cpus_per_trial)
    failed = [r for r in grid if r.error is not None]
    print(
        f"re-run finished: {len(grid) - len(failed)} trials ok, {len(failed)} failed; "
        f"report: cxr-tune report {plan.source}",
        flush=True,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(exit_status(main))
