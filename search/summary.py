"""What a finished (or stopped) sweep did: the summary printed at the end and kept as
summary.json (`trainables.experiment.write_summary`), from the trials Ray tracked."""

from __future__ import annotations

import json
import math
import shlex
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from search.progress import describe
from search.storage import is_uri, join_storage, read_text
from trainables.config import TrialConfig
from trainables.experiment import (
    COMPLETED,
    DATA_REPORT_FILE,
    ERRORED,
    STOPPED,
    TERMINAL_STATUSES,
    ExperimentRecord,
    ScoredCheckpoint,
    best_checkpoint,
    best_of,
    journal_path,
    parse_data_report,
    read_params,
    read_ray_states,
    trial_outcome,
    wandb_sync_command,
)


def saved_statuses(record: ExperimentRecord) -> dict[str, str]:
    """Trial id -> status in the newest experiment state Ray saved (what a resume sees).

    After Ctrl-C Ray saves the state first and then stops the running trials, so in memory
    they look TERMINATED while on disk they are RUNNING and a resume continues them. Only a
    local experiment's state is read ({} for a URI).
    """
    if is_uri(record.path):
        return {}
    return {s.trial_id: s.status for s in read_ray_states(Path(record.path)) if s.trial_id}


def trial_row(trial: Any, status: str, record: ExperimentRecord, gpus: float) -> dict[str, Any]:
    """One trial's line of summary.json."""
    last = trial.last_result or {}
    epoch = int(last.get("epoch", 0))
    outcome = trial_outcome(status, epoch, record.max_epochs)
    return {
        "trial_id": trial.trial_id,
        "status": status,
        "outcome": outcome,
        "epochs": epoch,
        "stopped_early": outcome == STOPPED,
        "error": outcome == ERRORED,
        "failures": int(getattr(trial, "num_failures", 0)),
        record.metric: last.get(record.metric),
        "seconds": float(last.get("time_total_s", 0.0)),
        "node_ip": last.get("node_ip"),
        "gpus": gpus,
        "config": {k: trial.config[k] for k in sorted(trial.config)},
    }


def tracked_trials(grid: Any) -> list[Any]:
    """Every trial Ray tracked, as its final saved state has them (public
    `tune.ExperimentAnalysis`): ResultGrid's Results carry no status, failure count, or trial
    that never reported, and summary.json lists them all."""
    from ray import tune

    analysis = tune.ExperimentAnalysis(grid.experiment_path, storage_filesystem=grid.filesystem)
    return list(analysis.trials)


def summarize(
    grid: Any, record: ExperimentRecord, wall_s: float, gpus_of: Callable[[dict], float]
) -> dict[str, Any]:
    """What happened, from the trials Ray tracked (statuses as saved for a resume)."""
    trials = tracked_trials(grid)
    saved = saved_statuses(record)
    rows = [
        trial_row(t, saved.get(t.trial_id, t.status), record, gpus_of(t.config)) for t in trials
    ]
    return {
        "name": record.name,
        "metric": record.metric,
        "mode": record.mode,
        "trials": len(trials),
        "num_samples": record.num_samples,
        "finished": sum(r["outcome"] == COMPLETED for r in rows),
        "stopped_early": [
            {"trial_id": r["trial_id"], "epoch": r["epochs"]} for r in rows if r["stopped_early"]
        ],
        "errors": [r["trial_id"] for r in rows if r["error"]],
        "wall_s": wall_s,
        "gpu_hours": sum(r["seconds"] * r["gpus"] / 3600.0 for r in rows),
        "trial_rows": rows,
        "best": best_epoch(grid, record),
    }


def best_epoch(grid: Any, record: ExperimentRecord) -> dict[str, Any] | None:
    """The sweep's best: the checkpoint the export exports and the report ranks first, by the
    product's one rule (`trainables.experiment.best_checkpoint`: the better value, then the
    earlier epoch, then the smaller trial id), with that epoch's metrics; None when no kept
    checkpoint scored. A local sweep is read from its files, exactly as the export reads them;
    a sweep at a URI from the checkpoints Ray kept (`Result.best_checkpoints`)."""
    if is_uri(record.path):
        return _best_kept(grid, record.metric, record.mode)
    try:
        best = best_checkpoint(Path(record.path), record.metric, record.mode)
    except ValueError:  # no trial, or nothing scored
        return None
    return _best_entry(best, read_params(best.trial_dir), str(best.trial_dir))


def _best_kept(grid: Any, metric: str, mode: str) -> dict[str, Any] | None:
    """`best_epoch` from Ray's results (public `ResultGrid` and `Result` accessors)."""
    found: dict[str, tuple[dict[str, Any], str]] = {}
    candidates = []
    for result in grid:
        for checkpoint, metrics in result.best_checkpoints or []:
            value = metrics.get(metric)
            if not _is_number(value) or "epoch" not in metrics:
                continue
            trial_id = str(metrics.get("trial_id", ""))
            found[trial_id] = (result.config, str(result.path))
            candidates.append(
                ScoredCheckpoint(
                    Path(checkpoint.path),
                    trial_id,
                    int(metrics["epoch"]),
                    Path(checkpoint.path),
                    float(value),
                    dict(metrics),
                )
            )
    best = best_of(candidates, mode)
    return None if best is None else _best_entry(best, *found[best.trial_id])


def _best_entry(best: ScoredCheckpoint, config: dict[str, Any], path: str) -> dict[str, Any]:
    """summary.json's `best`."""
    return {
        "trial_id": best.trial_id,
        "value": best.value,
        "epoch": best.epoch,
        "checkpoint": best.checkpoint_dir.name,
        "config": config,
        "metrics": {
            k: float(v)
            for k, v in best.row.items()
            if k.startswith(("val_", "train_")) and _is_number(v)
        },
        "path": path,
    }


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def sweep_state(summary: dict[str, Any], budget_hit: bool) -> str:
    statuses = [r["status"] for r in summary["trial_rows"]]
    if all(s in TERMINAL_STATUSES for s in statuses) and len(statuses) >= summary["num_samples"]:
        return "finished"
    if budget_hit and all(s in TERMINAL_STATUSES for s in statuses):
        return "time budget reached"
    return "interrupted"


def print_summary(summary: dict[str, Any], state: str, record: ExperimentRecord) -> None:
    metric = summary["metric"]
    print()
    print(
        f"sweep {summary['name']}: {state} ({summary['trials']}/{summary['num_samples']} "
        f"trials, wall {summary['wall_s']:.0f} s, {summary['gpu_hours']:.3f} GPU-hours)"
    )
    best = summary.get("best")
    if best:
        others = ", ".join(
            f"{k} {best['metrics'][k]:.4f}"
            for k in ("val_acc", "val_loss")
            if k in best["metrics"] and k != metric
        )
        # with a selection re-run the headline is the mean over seeds, printed after it
        label = "best single epoch (one seed)" if record.select_top else "best"
        print(
            f"{label} {metric} {best['value']:.4f} (trial {best['trial_id']}, epoch "
            f"{best['epoch']}{'; ' + others if others else ''}): {describe(best['config'])}"
        )
        print("  config: " + json.dumps(best["config"], sort_keys=True, default=str))
    stopped = summary["stopped_early"]
    cause = "by ASHA" if state != "time budget reached" else "by ASHA or the time budget"
    print(
        f"stopped early {cause}: {len(stopped)}"
        + (
            ": " + ", ".join(f"{s['trial_id']}@epoch {s['epoch']}" for s in stopped)
            if stopped
            else ""
        )
    )
    print(f"finished all {record.max_epochs} epochs: {summary['finished']}")
    data = summary.get("data")
    if data:
        print(
            f"data: {len(data['classes'])} classes {data['classes']}, "
            f"{len(data['skipped'])} skipped file(s) (listed in summary.json)"
        )
    print(
        f"errors: {len(summary['errors'])}"
        + (": " + ", ".join(summary["errors"]) if summary["errors"] else "")
    )


def print_next_steps(record: ExperimentRecord, bundle: Path | None) -> None:
    """What to do with the finished sweep: each tool pointed at this experiment's files (and at
    the bundle it exported, wherever --export put it)."""
    where = record.local_dir
    steps = [("report", f"cxr-tune report {where}")]
    if bundle is not None:
        steps.append(("predict", f"cxr-tune predict {shlex.quote(str(bundle))} IMAGE..."))
    if record.wandb_mode == "offline":
        steps.append(("W&B", f"{wandb_sync_command(record.wandb_dir or where)}  (upload)"))
    elif record.wandb_mode == "online":
        steps.append(("W&B", f"project {record.wandb_project}, group {record.name}"))
    journal = journal_path(where)
    if journal.is_file():
        dashboard = installed_command("optuna-dashboard")
        steps.append(
            ("Optuna", f"{dashboard} {journal}")
            if dashboard
            else ("Optuna", f"optuna-dashboard {journal}  (pip install optuna-dashboard)")
        )
    tensorboard = installed_command("tensorboard")
    if tensorboard:  # Ray's event files are in the trial folders; the viewer is not a dependency
        steps.append(("TensorBoard", f"{tensorboard} --logdir {record.path}"))
    print("next steps:")
    for what, command in steps:
        print(f"  {what:<12} {command}")


def installed_command(name: str) -> str | None:
    """How to run the console script `name` here: its name when it is on PATH, its path when it
    sits beside this Python (a venv used without activating it); None when it is not installed."""
    if shutil.which(name):
        return name
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else None


def all_failed(summary: dict[str, Any]) -> bool:
    """Every trial of the sweep ended in an error (and there was at least one)."""
    rows = summary["trial_rows"]
    return bool(rows) and all(r["error"] for r in rows)


def data_summary(record: ExperimentRecord) -> dict[str, Any] | None:
    """The run's data report as saved by the pre-flight (classes, counts, every skipped file
    with its reason), for summary.json; None for an experiment without one."""
    where = join_storage(record.path, DATA_REPORT_FILE)
    text = read_text(where)
    reports = parse_data_report(text, where) if text else []
    return reports[0] if reports else None


def data_leakage(summary: dict[str, Any], record: ExperimentRecord) -> dict[str, Any]:
    """summary.json's `leakage`: the pre-flight's audit (`trainables.leakage`, kept in the
    experiment) of the data the best trial trained on (the record's data settings when nothing
    scored). Read, never recomputed: a missing audit is recorded as an error, never raised."""
    from trainables.leakage import LEAKAGE_FILE, describe_audit, find_audit, parse_leakage_file

    best = summary.get("best")
    config = best["config"] if best else {**record.defaults, **record.overrides}
    where = join_storage(record.path, LEAKAGE_FILE)
    try:
        text = read_text(where)
        audits = parse_leakage_file(text, where) if text else []
        leakage = find_audit(audits, TrialConfig.from_dict(config))
    except ValueError as err:
        leakage = {"error": str(err)}
    if leakage is None:
        leakage = {"error": f"{where} holds no audit of this data setting: cxr-tune report runs it"}
    print(describe_audit(leakage), file=sys.stderr if "error" in leakage else sys.stdout)
    return leakage
