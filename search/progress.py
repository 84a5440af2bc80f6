"""The live view of a sweep: one line per trial event instead of Ray's tables.

[    12s] 3f2a_00001 epoch 2/10 val_loss 0.8123            | run 2 done 1/10 best val_loss 0.7...
"""

from __future__ import annotations

import time
from typing import Any

from trainables.experiment import COMPLETED, TERMINAL_STATUSES, is_better, trial_outcome


def make_progress_callback(metric: str, mode: str, max_epochs: int, num_samples: int):
    from ray.tune import Callback

    class ProgressLines(Callback):
        """One line per trial event: start, epoch result, stop, error."""

        def __init__(self) -> None:
            self.started = time.monotonic()
            self.best: float | None = None

        def setup(self, **info: Any) -> None:
            self.started = time.monotonic()  # also after Tuner.restore unpickles this callback

        def _line(self, trials: list, text: str) -> None:
            done = sum(t.status in TERMINAL_STATUSES for t in trials)
            running = sum(t.status == "RUNNING" for t in trials)
            best = "-" if self.best is None else f"{self.best:.4f}"
            elapsed = time.monotonic() - self.started
            print(
                f"[{elapsed:6.0f}s] {text:<62} | run {running} done {done}/{num_samples} "
                f"best {metric} {best}",
                flush=True,
            )

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._line(trials, f"{trial.trial_id} start {describe(trial.config)}")

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            value = result.get(metric)
            if value is not None and (self.best is None or is_better(value, self.best, mode)):
                self.best = float(value)
            epoch = int(result.get("epoch", result.get("training_iteration", 0)))
            shown = "nan" if value is None else f"{value:.4f}"
            self._line(trials, f"{trial.trial_id} epoch {epoch}/{max_epochs} {metric} {shown}")

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            epoch = int((trial.last_result or {}).get("epoch", 0))
            done = trial_outcome(None, epoch, max_epochs) == COMPLETED
            how = "finished" if done else f"stopped early at epoch {epoch}"
            self._line(trials, f"{trial.trial_id} {how}")

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            self._line(trials, f"{trial.trial_id} ERROR (see {trial.path}/error.txt)")

    return ProgressLines()


def describe(config: dict[str, Any]) -> str:
    """The config's main choices in one short line (floats to two significant digits)."""
    keys = ("model", "balance", "augment", "frozen_depth", "weights", "lr", "weight_decay")
    parts = []
    for k in keys:
        if k in config:
            v = config[k]
            parts.append(f"{k}={v:.2g}" if isinstance(v, float) else f"{k}={v}")
    return " ".join(parts)
