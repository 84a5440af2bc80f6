"""Weights & Biases logging for a sweep, through Ray's `WandbLoggerCallback`.

- One W&B run per trial, grouped by the experiment name, with the trial's config.
- Mode: `--wandb-mode` if given, else `online` when `WANDB_API_KEY` is set and `offline`
  otherwise; `disabled` logs nothing and never imports wandb.
- Runs land in the experiment directory (`STORAGE/NAME/wandb/offline-run-*`); upload offline runs
  later with `wandb sync STORAGE/NAME/wandb/offline-run-*`.
- W&B being unreachable never hangs or fails the sweep: each trial's run starts in its own Ray
  actor with a short init timeout, and the end-of-sweep wait for runs to finish is bounded.
- The API key stays in memory: it is never a callback argument, a config value or part of
  Ray's runtime env (`search.wandb_callback` hands it to the logging actors as a constructor
  argument; `search.cluster.local_ray` starts Ray's processes without it).
  What is logged leaves out the three key field names of `excluded_keys` (Ray's callback
  drops exactly those names); the files the sweep writes go through `scrub`, which drops any
  field whose name contains `api_key` and any value that holds the key itself.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

WANDB_MODES = ("online", "offline", "disabled")
INIT_TIMEOUT = 30.0  # seconds wandb.init may wait for the server before giving up
# Seconds the end of a sweep waits for the trials' W&B runs to finish (upload when online);
# a loaded machine needs tens of seconds just to start a run's process.
UPLOAD_TIMEOUT = {"online": 180, "offline": 90}
SECRET_ENV = ("WANDB_API_KEY",)


def resolve_mode(mode: str | None) -> str:
    if mode is None:
        return "online" if os.environ.get("WANDB_API_KEY") else "offline"
    if mode not in WANDB_MODES:
        raise ValueError(f"unknown W&B mode {mode!r}; expected one of {list(WANDB_MODES)}")
    return mode


def wandb_callback(project: str, group: str, mode: str, run_dir: Path) -> Any | None:
    """A configured `WandbLoggerCallback`, or None when W&B is disabled."""
    if mode == "disabled":
        return None
    import wandb

    from search.wandb_callback import EndingWandbLoggerCallback

    run_dir.mkdir(parents=True, exist_ok=True)
    # Ray's callback checks the key in setup() unless WANDB_MODE says offline; the logging
    # actors inherit this environment.
    os.environ["WANDB_MODE"] = mode
    settings = wandb.Settings(
        init_timeout=INIT_TIMEOUT,
        x_disable_stats=True,  # no system-metrics sampler competing with training for CPU
        console="off",
    )
    return EndingWandbLoggerCallback(
        project=project,
        group=group,
        mode=mode,
        dir=str(run_dir),
        settings=settings,
        upload_timeout=UPLOAD_TIMEOUT[mode],
        excludes=excluded_keys(),
        log_config=False,
    )


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
