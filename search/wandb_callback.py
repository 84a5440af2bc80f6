"""Ray's `WandbLoggerCallback`, ending every trial's W&B run when the sweep ends, with the API
key kept out of Ray's runtime env.

Imported only when W&B is enabled (importing it imports wandb). Ray sends a trial's logging
actor its end marker only from `log_trial_end`; trials still running when a sweep is
interrupted never get one, so Ray's `on_experiment_end` waits its whole upload timeout for
them and then kills them mid-write. Sending the marker to every actor first lets each run
flush its history and finish; the timeout then only bounds slow uploads.

Ray's callback hands `WANDB_API_KEY` to its logging actors as `runtime_env={"env_vars": ...}`,
and Ray's runtime-env agent then writes that env, key included, into
`session_*/logs/runtime_env_agent.log`. Here the actors get an empty runtime env and the key
as a constructor argument (in memory: Ray's task spec), which the actor puts into its own
process environment before `wandb.init` reads it.
"""

from __future__ import annotations

import os
from typing import Any

from ray.air.integrations.wandb import WandbLoggerCallback, _WandbLoggingActor

from search.tracking import SECRET_ENV


class _KeyedLoggingActor(_WandbLoggingActor):
    def __init__(self, *args: Any, secret_env: dict[str, str] | None = None, **kwargs: Any):
        os.environ.update(secret_env or {})
        super().__init__(*args, **kwargs)


class EndingWandbLoggerCallback(WandbLoggerCallback):
    _logger_actor_cls = _KeyedLoggingActor

    def _start_logging_actor(self, trial: Any, exclude_results: list, **init_kwargs: Any) -> None:
        secrets = {k: os.environ[k] for k in SECRET_ENV if os.environ.get(k)}
        for key in secrets:  # Ray's method copies these into the actors' runtime env
            del os.environ[key]
        try:
            super()._start_logging_actor(trial, exclude_results, secret_env=secrets, **init_kwargs)
        finally:
            os.environ.update(secrets)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        for trial in list(self._trial_queues):
            # A second end marker for a trial that already ended is never read: harmless.
            self._signal_logging_actor_stop(trial)
        super().on_experiment_end(trials, **info)
