"""One W&B run per trial, from the driver, through Ray Tune's public `tune.Callback`.

Imported only when W&B is enabled (importing it imports wandb).

- At a trial's start the driver opens its run (`wandb.init(reinit="create_new")`, W&B's way of
  holding several runs in one process; id = Ray's trial id): the whole `TrialConfig` plus the
  experiment (`search.tracking`) as its config, job_type `trial`, tags, and the sweep's metric
  defined with `summary=MODE`, so W&B's runs table sorts like the sweep.
- Each result is logged as one history row (step = Ray's training iteration), without the
  keys of `excluded_keys` and without anything that is not a number.
- At the trial's end (completed, stopped early by ASHA or the time budget, errored) the run's
  summary gets the best epoch and how the trial ended, its tags the outcome, and the run is
  finished in a thread the trial's end waits for (up to `TRIAL_END_TIMEOUT`).
- At the sweep's end the runs of trials still running (an interrupted sweep) are finished too,
  and the wait for all of them is bounded by the mode's `UPLOAD_TIMEOUT`; a run cut there is
  named in a warning.
- The API key never leaves the driver: wandb reads it from the driver's environment; no Ray
  actor, runtime env or log sees it. W&B trouble never fails the sweep: when the server cannot
  be reached, that run and every later one are written offline (one warning naming the folder
  to `wandb sync`); any other failure costs a trial its run, with a warning.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Mapping
from numbers import Number
from pathlib import Path
from typing import Any

import numpy as np
import wandb
from ray import tune
from ray.air.constants import TRAINING_ITERATION
from ray.tune.utils import flatten_dict

from search.tracking import (
    TRIAL_END_TIMEOUT,
    UPLOAD_TIMEOUT,
    excluded_keys,
    outcome,
    run_summary,
    trial_tags,
    wandb_settings,
)
from trainables.config import TrialConfig


class TrialRuns(tune.Callback):
    """The trials' W&B runs (see the module's docstring)."""

    def __init__(
        self,
        *,
        project: str,
        group: str,
        mode: str,
        run_dir: Path,
        metric: str,
        metric_mode: str,
        max_epochs: int,
        experiment: Mapping[str, Any],
    ) -> None:
        self.init = {"project": project, "group": group, "mode": mode, "dir": str(run_dir)}
        self.metric, self.metric_mode, self.max_epochs = metric, metric_mode, max_epochs
        self.experiment = dict(experiment)
        self.upload_timeout = UPLOAD_TIMEOUT[mode]
        self.runs: dict[str, Any] = {}  # trial id -> its open run
        self.rows: dict[str, list[dict[str, Any]]] = {}
        self.finishing: dict[str, threading.Thread] = {}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        try:
            run = self._open(trial)
        except Exception as err:  # noqa: BLE001 - W&B trouble must not fail a trial
            if self.init["mode"] != "online":
                print(f"W&B: trial {trial.trial_id} has no run: {err}", file=sys.stderr)
                return
            # The server is unreachable: this and every later run are written offline (each
            # online attempt would hold the sweep's loop for the init timeout), to sync later.
            why = (str(err).splitlines() or [type(err).__name__])[0]
            print(
                f"W&B: cannot reach the server ({why}); this sweep's runs are written offline "
                f"under {self.init['dir']}: upload them later with `wandb sync`",
                file=sys.stderr,
                flush=True,
            )
            self.init["mode"] = "offline"
            self.upload_timeout = UPLOAD_TIMEOUT["offline"]
            if not self.runs:  # the failed init keeps the trial's run id: start W&B afresh
                wandb.teardown()
            self.on_trial_start(iteration, trials, trial, **info)
            return
        self.runs[trial.trial_id], self.rows[trial.trial_id] = run, []

    def _open(self, trial: Any) -> Any:
        config = _trial_config(trial.config)
        run = wandb.init(
            **self.init,
            id=trial.trial_id,
            name=str(trial),
            config={**config, "experiment": self.experiment, "ray_trial_id": trial.trial_id},
            job_type="trial",
            tags=trial_tags(config, self.experiment),
            settings=wandb_settings(quiet=True),  # no "wandb: ..." lines between the progress
            reinit="create_new",
            allow_val_change=True,
        )
        run.define_metric("epoch")
        run.define_metric(self.metric, summary=self.metric_mode)  # the runs table sorts by it
        return run

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        run = self.runs.get(trial.trial_id)
        if run is None:
            return
        row = _loggable(result)
        try:
            run.log(row, step=result.get(TRAINING_ITERATION))
        except Exception as err:  # noqa: BLE001 - a lost row is a warning
            print(f"W&B: did not log a result of trial {trial.trial_id}: {err}", file=sys.stderr)
        self.rows[trial.trial_id].append(row)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, failed=False)
        self._wait([trial.trial_id], TRIAL_END_TIMEOUT)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, failed=True)
        self._wait([trial.trial_id], TRIAL_END_TIMEOUT)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        for trial_id in list(self.runs):  # still running: the sweep was interrupted
            self._finish(trial_id, None)
        cut = self._wait(list(self.finishing), self.upload_timeout)
        if cut:
            print(
                f"W&B: the runs of trial(s) {', '.join(cut)} did not finish within "
                f"{self.upload_timeout} s; their run files may be incomplete",
                file=sys.stderr,
                flush=True,
            )

    def _end(self, trial: Any, failed: bool) -> None:
        if trial.trial_id not in self.runs:
            return
        last = trial.last_result or {}
        epoch = int(last.get("epoch", last.get(TRAINING_ITERATION, 0)) or 0)
        self._finish(trial.trial_id, outcome(epoch, self.max_epochs, failed))

    def _finish(self, trial_id: str, ended: dict[str, Any] | None) -> None:
        """Summary and tags now; `run.finish` (an upload when online) in a thread."""
        run, rows = self.runs.pop(trial_id), self.rows.pop(trial_id)
        try:
            run.summary.update(run_summary(rows, self.metric, self.metric_mode, ended))
            if ended:
                run.tags = (*run.tags, ended["tag"])
        except Exception as err:  # noqa: BLE001
            print(f"W&B: trial {trial_id}'s summary was not written: {err}", file=sys.stderr)
        thread = threading.Thread(target=run.finish, name=f"wandb-finish-{trial_id}", daemon=True)
        thread.start()
        self.finishing[trial_id] = thread

    def _wait(self, trial_ids: list[str], timeout: float) -> list[str]:
        """Join these runs' finishing threads within `timeout` seconds in all; the ids cut."""
        deadline = time.monotonic() + timeout
        cut = []
        for trial_id in trial_ids:
            thread = self.finishing.get(trial_id)
            if thread is None:
                continue
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                cut.append(trial_id)
            else:
                del self.finishing[trial_id]
        return sorted(cut)


def _trial_config(values: Mapping[str, Any]) -> dict[str, Any]:
    """Every `TrialConfig` field (defaults too), without excluded keys."""
    try:
        config = TrialConfig.from_dict(dict(values)).to_dict()
    except (TypeError, ValueError):
        config = dict(values)
    excluded = set(excluded_keys())
    return {k: v for k, v in config.items() if k not in excluded}


NOT_LOGGED = ("config", "done", "should_checkpoint")  # as Ray's own W&B callback leaves out


def _loggable(result: Mapping[str, Any]) -> dict[str, Any]:
    """A result's numbers, flattened ('a/b'), without its config and excluded keys."""
    excluded = set(excluded_keys())
    flat = flatten_dict({k: v for k, v in result.items() if k not in NOT_LOGGED}, delimiter="/")
    return {
        k: v
        for k, v in flat.items()
        if k.split("/")[0] not in excluded and isinstance(v, (Number, np.number))
    }


def wandb_callback(
    project: str,
    group: str,
    mode: str,
    run_dir: Path,
    *,
    metric: str,
    metric_mode: str,
    max_epochs: int,
    experiment: Mapping[str, Any] | None = None,
) -> TrialRuns:
    """The sweep's W&B callback (W&B enabled: the caller checks `mode`)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    return TrialRuns(
        project=project,
        group=group,
        mode=mode,
        run_dir=run_dir,
        metric=metric,
        metric_mode=metric_mode,
        max_epochs=max_epochs,
        experiment=dict(experiment or {}),
    )
