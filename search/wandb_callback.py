"""Ray's `WandbLoggerCallback`, ending every trial's W&B run when the sweep ends.

Imported only when W&B is enabled (importing it imports wandb). Ray sends a trial's logging
actor its end marker only from `log_trial_end`; trials still running when a sweep is
interrupted never get one, so Ray's `on_experiment_end` waits its whole upload timeout for
them and then kills them mid-write. Sending the marker to every actor first lets each run
flush its history and finish; the timeout then only bounds slow uploads.
"""

from __future__ import annotations

from typing import Any

from ray.air.integrations.wandb import WandbLoggerCallback


class EndingWandbLoggerCallback(WandbLoggerCallback):
    def on_experiment_end(self, trials: list, **info: Any) -> None:
        for trial in list(self._trial_queues):
            # A second end marker for a trial that already ended is never read: harmless.
            self._signal_logging_actor_stop(trial)
        super().on_experiment_end(trials, **info)
