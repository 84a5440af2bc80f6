"""Ray's `WandbLoggerCallback` with runs W&B users can sort, filter and trust.

Imported only when W&B is enabled (importing it imports wandb).

- Each trial's run gets the whole `TrialConfig` plus the experiment (`search.tracking`) as its
  config, job_type `trial` and tags; its logging actor defines the sweep's metric with
  `summary=MODE` and, when the trial ends, writes its best epoch and how it ended (`completed`,
  `stopped_early` with the stop epoch, `error`) into the summary and tags.
- Ray sends a trial's logging actor its end marker only from `log_trial_end`; trials still
  running when a sweep is interrupted never get one, so Ray's `on_experiment_end` waits its
  whole upload timeout for them and then kills them mid-write. Sending the marker to every
  actor first lets each run flush its history and finish; the timeout then only bounds slow
  uploads.
- Ray's `log_trial_end` only sends the end marker: a run whose actor was still starting (a
  loaded machine takes tens of seconds) was killed at the sweep's end, its run file left at
  W&B's 7-byte header. Here the end of a trial waits (up to `TRIAL_END_TIMEOUT`) for its run to
  finish and be written; a run still unfinished when the sweep ends is named in a warning.

Ray's callback hands `WANDB_API_KEY` to its logging actors as `runtime_env={"env_vars": ...}`,
and Ray's runtime-env agent then writes that env, key included, into
`session_*/logs/runtime_env_agent.log`. Here the actors get an empty runtime env and the key
as a constructor argument (in memory: Ray's task spec), which the actor puts into its own
process environment before `wandb.init` reads it.
"""

from __future__ import annotations

import os
import sys
import urllib.error
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ray
from ray.air.constants import TRAINING_ITERATION

# Private names (checked on Ray 2.60.0): the logging actor, its queue items and run-info hook
# have no public counterpart; `tests/search/test_private_apis.py` lists every such use.
from ray.air.integrations.wandb import (
    WandbLoggerCallback,
    _QueueItem,
    _run_wandb_process_run_info_hook,
    _WandbLoggingActor,
)

from search.tracking import (
    SECRET_ENV,
    TRIAL_END_TIMEOUT,
    UPLOAD_TIMEOUT,
    excluded_keys,
    outcome,
    run_summary,
    trial_tags,
    wandb_settings,
)
from trainables.config import TrialConfig

OUTCOME = "cxr-tune outcome"  # queue item kind: how the trial ended, just before Ray's END


class TrialRunActor(_WandbLoggingActor):
    """Ray's logging actor, plus the metric's summary, the best epoch and the trial's outcome."""

    def __init__(self, logdir: str, queue: Any, exclude: list, to_config: list, *args, **kwargs):
        self._metric = kwargs.pop("cxr_metric")
        self._metric_mode = kwargs.pop("cxr_mode")
        os.environ.update(kwargs.pop("secret_env", None) or {})  # the key, in this actor only
        super().__init__(logdir, queue, exclude, to_config, *args, **kwargs)

    def run(self) -> None:
        os.environ["WANDB_START_METHOD"] = "thread"
        run = self._wandb.init(*self.args, **self.kwargs)
        run.config.trial_log_path = self._logdir
        _run_wandb_process_run_info_hook(run)
        run.define_metric("epoch")
        run.define_metric(self._metric, summary=self._metric_mode)  # runs table sorts by it
        rows: list[dict[str, Any]] = []
        ended = None
        while True:
            kind, content = self.queue.get()
            if kind == _QueueItem.END:
                break
            if kind == OUTCOME:
                ended = content
                continue
            if kind != _QueueItem.RESULT:
                continue  # checkpoints are not uploaded (the exported bundle is)
            log, config_update = self._handle_result(content)
            try:
                self._wandb.config.update(config_update, allow_val_change=True)
                self._wandb.log(log, step=log.get(TRAINING_ITERATION))
            except (urllib.error.HTTPError, FileNotFoundError) as err:
                print(f"W&B: did not log a result: {err}")
            rows.append(log)
        run.summary.update(run_summary(rows, self._metric, self._metric_mode, ended))
        if ended:
            run.tags = (*run.tags, ended["tag"])
        self._wandb.finish()


class EndingWandbLoggerCallback(WandbLoggerCallback):
    _logger_actor_cls = TrialRunActor

    def __init__(
        self,
        *args: Any,
        metric: str,
        metric_mode: str,
        max_epochs: int,
        experiment: dict[str, Any],
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._init_kwargs = dict(self.kwargs)
        self.metric, self.metric_mode, self.max_epochs = metric, metric_mode, max_epochs
        self.experiment = experiment

    def _start_logging_actor(self, trial: Any, exclude_results: list, **init_kwargs: Any) -> None:
        # Private override (checked on Ray 2.60.0, W&B 0.31.0): the one place Ray copies the
        # key into the logging actors' runtime env, so it is held back around Ray's method.
        secrets = {k: os.environ[k] for k in SECRET_ENV if os.environ.get(k)}
        for key in secrets:  # Ray's method copies these into the actors' runtime env
            del os.environ[key]
        try:
            super()._start_logging_actor(trial, exclude_results, secret_env=secrets, **init_kwargs)
        finally:
            os.environ.update(secrets)

    def log_trial_start(self, trial: Any) -> None:
        try:
            config = TrialConfig.from_dict(trial.config).to_dict()  # every field, defaults too
        except (TypeError, ValueError):
            config = dict(trial.config)
        config = {k: v for k, v in config.items() if k not in self.excludes}
        # Ray's log_trial_start lets these kwargs override what it passes to wandb.init.
        self.kwargs = {
            **self._init_kwargs,
            "config": {**config, "experiment": self.experiment, "ray_trial_id": trial.trial_id},
            "job_type": "trial",
            "tags": trial_tags(config, self.experiment),
            "cxr_metric": self.metric,
            "cxr_mode": self.metric_mode,
        }
        super().log_trial_start(trial)

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        last = trial.last_result or {}
        epoch = int(last.get("epoch", last.get(TRAINING_ITERATION, 0)) or 0)
        if trial not in self._trial_queues:
            return
        self._trial_queues[trial].put((OUTCOME, outcome(epoch, self.max_epochs, failed)))
        self._signal_logging_actor_stop(trial)
        # The run is finished and its files written before the trial counts as ended.
        ray.wait([self._trial_logging_futures[trial]], timeout=TRIAL_END_TIMEOUT)
        self._cleanup_logging_actors()  # the finished ones; the rest wait for the sweep's end

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        for trial in list(self._trial_queues):
            # A second end marker for a trial that already ended is never read: harmless.
            self._signal_logging_actor_stop(trial)
        pending = dict(self._trial_logging_futures)
        if not pending:
            return
        _, unfinished = ray.wait(
            list(pending.values()), num_returns=len(pending), timeout=self._upload_timeout
        )
        cut = sorted(t.trial_id for t, future in pending.items() if future in unfinished)
        self._cleanup_logging_actors(timeout=0, kill_on_timeout=True)
        if cut:
            print(
                f"W&B: the runs of trial(s) {', '.join(cut)} did not finish within "
                f"{self._upload_timeout} s and were stopped; their run files may be incomplete",
                file=sys.stderr,
                flush=True,
            )


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
) -> EndingWandbLoggerCallback:
    """A configured `EndingWandbLoggerCallback` (W&B enabled: the caller checks `mode`)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    # Ray's callback checks the key in setup() unless WANDB_MODE says offline; the logging
    # actors inherit this environment.
    os.environ["WANDB_MODE"] = mode
    return EndingWandbLoggerCallback(
        project=project,
        group=group,
        mode=mode,
        dir=str(run_dir),
        settings=wandb_settings(),
        upload_timeout=UPLOAD_TIMEOUT[mode],
        excludes=excluded_keys(),
        log_config=False,
        metric=metric,
        metric_mode=metric_mode,
        max_epochs=max_epochs,
        experiment=dict(experiment or {}),
    )
