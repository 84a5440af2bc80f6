"""Weights & Biases logging for a sweep: one run per trial, opened by the driver.

- One W&B run per trial (job_type `trial`), grouped by the experiment name. Its config is the
  whole `TrialConfig` plus `experiment` (space, metric, ASHA settings, profile, code version:
  `experiment_config`); its tags say the profile, space and model, and when it ends whether it
  `completed`, `stopped_early` (by ASHA or the time budget) or hit an `error`.
- The run's summary ranks like the sweep: `define_metric(METRIC, summary=MODE)` keeps the best
  value (`val_loss.min`), and `best_epoch` / `best` hold the trial's best epoch and its row by
  the rule export and report rank by (`trainables.experiment.best_epoch_row`), plus
  `stopped_early` and `stop_epoch`.
- After the export, the bundle is logged as a `model` artifact of its own run (job_type
  `export`, `log_bundle`); `analysis.report --wandb` adds a `report` run to the same group.
- Mode: W&B's own rule (`trainables.experiment.wandb_mode`): `--wandb-mode`, else `WANDB_MODE`,
  else online when a key is configured (WANDB_API_KEY or `wandb login`'s netrc), else offline;
  `disabled` logs nothing and never imports wandb.
- Every run lands in the experiment directory (`STORAGE/NAME/wandb/offline-run-*`), so one
  `wandb sync` (`trainables.experiment.wandb_sync_command`) uploads them all later.
- W&B being unreachable never hangs or fails the sweep: each trial's run starts with a short
  init timeout, and the waits for runs to finish are bounded.
- The API key stays in memory and in the driver: the trials' runs are opened by the driver
  (`search.wandb_callback`, a public `tune.Callback`), so it is never a callback argument, a
  config value or part of Ray's runtime env (`search.cluster.local_ray` starts Ray's
  processes without it). What is logged leaves out the three key field names of
  `excluded_keys`; the files the sweep writes go through `scrub`, which drops any
  field whose name contains `api_key` and any value that holds the key itself.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from trainables.experiment import (
    COMPLETED,
    ERRORED,
    STOPPED,
    UNFINISHED,
    WANDB_MODES,
    ExperimentRecord,
    best_epoch_row,
    trial_outcome,
)

__all__ = ["WANDB_MODES"]

INIT_TIMEOUT = 30.0  # seconds wandb.init may wait for the server before giving up
# Seconds the end of a sweep waits for the trials' W&B runs to finish (upload when online);
# a loaded machine needs tens of seconds just to start a run's process.
UPLOAD_TIMEOUT = {"online": 180, "offline": 90}
# Seconds the end of a trial waits for its run to finish (offline: written to its files). The
# driver's loop waits meanwhile; an unreachable server ends wandb.init in INIT_TIMEOUT.
TRIAL_END_TIMEOUT = 60.0
SECRET_ENV = ("WANDB_API_KEY",)
SUMMARY_PREFIXES = ("train_", "val_")  # the per-epoch metrics `best` keeps


def experiment_config(record: ExperimentRecord) -> dict[str, Any]:
    """What every run of the experiment records about it in its W&B config, with the classes
    the pre-flight found in the data (W&B filters and groups runs by them)."""
    from search.summary import data_summary

    config = scrub(record.wandb_config())
    data = data_summary(record)
    if data and data.get("classes"):
        config["classes"] = list(data["classes"])
    return config


def wandb_settings(quiet: bool = False) -> Any:
    import wandb

    return wandb.Settings(
        init_timeout=INIT_TIMEOUT,
        x_disable_stats=True,  # no system-metrics sampler competing with training for CPU
        console="off",
        silent=quiet,  # the driver's own runs: no "wandb: ..." banner between the sweep's lines
    )


def trial_tags(config: Mapping[str, Any], experiment: Mapping[str, Any]) -> list[str]:
    tags = ["trial"]
    if experiment.get("profile"):
        tags.append(f"profile:{experiment['profile']}")
    if experiment.get("space"):
        tags.append(f"space:{Path(str(experiment['space'])).stem}")
    if config.get("model"):
        tags.append(f"model:{config['model']}")
    return tags


# The run tag of each outcome (`trainables.experiment.trial_outcome`); a run ends only when its
# trial does, so one that reported no epoch was stopped early too.
OUTCOME_TAGS = {
    COMPLETED: "completed",
    STOPPED: "stopped_early",
    ERRORED: "error",
    UNFINISHED: "stopped_early",
}


def outcome(epoch: int, max_epochs: int, failed: bool) -> dict[str, Any]:
    """How a trial ended, as its run's tag and summary fields (epoch: the last reported)."""
    how = trial_outcome(None, epoch, max_epochs, raised=failed)
    ended: dict[str, Any] = {"tag": OUTCOME_TAGS[how]}
    ended["stopped_early"] = ended["tag"] == "stopped_early"
    if ended["stopped_early"]:
        ended["stop_epoch"] = epoch
    return ended | {"epochs": epoch}


def run_summary(
    rows: Sequence[Mapping[str, Any]], metric: str, mode: str, ended: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The summary fields a trial's run adds at its end: its best epoch and how it ended."""
    summary: dict[str, Any] = {}
    best = best_epoch_row(rows, metric, mode)
    if best is not None:
        epoch, row = best
        summary["best_epoch"] = epoch
        summary["best"] = {
            k: v for k, v in row.items() if k.startswith(SUMMARY_PREFIXES) and _is_number(v)
        } | {"epoch": epoch}
    if ended:
        summary.update({k: v for k, v in ended.items() if k != "tag"})
    return summary


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def log_bundle(
    record: ExperimentRecord, bundle: Path, meta: Mapping[str, Any], quiet: bool = True
) -> str | None:
    """Log the exported bundle as a `model` artifact of an `export` run in the experiment's
    group; returns the run's folder, None when W&B is disabled or failed (a warning, never an
    error: the bundle on disk is what matters)."""
    if record.wandb_mode == "disabled":
        return None
    if quiet:
        # Also W&B's own progress lines ("Adding directory to artifact..."), read at init.
        os.environ.setdefault("WANDB_SILENT", "true")
    try:
        import wandb

        run = wandb.init(
            project=record.wandb_project,
            group=record.name,
            job_type="export",
            name=f"export-{record.name}",
            tags=["export"] + ([f"profile:{record.profile}"] if record.profile else []),
            dir=record.wandb_dir or record.local_dir,
            mode=record.wandb_mode,
            config={"experiment": experiment_config(record), "source": dict(meta["source"])},
            settings=wandb_settings(quiet),
        )
        try:
            artifact = wandb.Artifact(
                name=f"{record.name}-model",
                type="model",
                description=f"best checkpoint of sweep {record.name} by {record.metric} "
                f"({record.mode}): safetensors, config.json, bundle.json, model.onnx",
                metadata={k: meta[k] for k in ("source", "onnx") if k in meta},
            )
            # Immutable: the manifest points at the bundle in the experiment folder instead of
            # a copy in W&B's staging folder, so `wandb sync` of this folder finds everything.
            artifact.add_dir(str(bundle), policy="immutable")
            run.log_artifact(artifact, aliases=["best"])
            run.summary.update({f"best_{record.metric}": meta["source"]["value"]})
            return str(Path(run.dir).parent)
        finally:
            run.finish()
            wandb.teardown()  # the offline run file is complete when this returns
    except Exception as err:  # W&B trouble must not fail a finished sweep
        print(f"W&B: could not log the bundle as an artifact: {err}", file=sys.stderr)
        return None


def excluded_keys() -> list[str]:
    """Result and config keys never sent to W&B."""
    return ["api_key", "wandb_api_key", "WANDB_API_KEY"]


def scrub(values: dict[str, Any]) -> dict[str, Any]:
    """A copy of `values` without secrets (for files the sweep writes, e.g. the experiment
    record): no field whose name contains `api_key`, no value holding a key from SECRET_ENV."""
    secrets = {os.environ[k] for k in SECRET_ENV if os.environ.get(k)}
    clean = {}
    for key, value in values.items():
        if "api_key" in key.lower():
            continue
        if isinstance(value, str) and any(s in value for s in secrets):
            continue
        clean[key] = value
    return clean
