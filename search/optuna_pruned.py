"""`OptunaSearch` that tells Optuna the truth about trials ASHA stopped early.

Ray 2.60's `OptunaSearch.on_trial_complete` (ray/tune/search/optuna/optuna_search.py) tells the
study `TrialState.COMPLETE` with the metric of the trial's *last* result whenever there is one.
A trial that ASHA stopped after epoch 1 therefore enters the study as a finished trial whose
final score is its epoch-1 score, and TPE ranks it against trials that trained to `MAX_EPOCHS`
as if both were final results; an errored trial with a result is also told COMPLETE.

Here a trial that ends before `max_epochs` without an error is told PRUNED (Optuna keeps its
per-epoch intermediate values and uses the last one as its value, the way TPE treats trials a
pruner stopped), a trial that reached `max_epochs` is told COMPLETE with its final value and an
errored trial is told FAIL. Intermediate values are reported per epoch (`result["epoch"]`, which
survives a restore from checkpoint) rather than per Ray iteration, including the final result:
Ray's controller does not call `on_trial_result` for the result on which a trial stops (ASHA's
STOP or the last epoch), only `on_trial_complete`, so without this a trial ASHA stopped at epoch
1 would reach the study with no intermediate values at all.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from optuna.trial import TrialState
from ray.air.constants import TRAINING_ITERATION
from ray.tune.search.optuna import OptunaSearch

logger = logging.getLogger(__name__)


class PrunedOptunaSearch(OptunaSearch):
    """`OptunaSearch` with per-epoch reports and PRUNED/COMPLETE/FAIL told honestly."""

    def __init__(self, *args: Any, max_epochs: int, epoch_key: str = "epoch", **kwargs: Any):
        self.max_epochs = max_epochs  # epochs, = ASHA max_t
        self.epoch_key = epoch_key
        super().__init__(*args, **kwargs)

    def _epoch(self, result: dict[str, Any]) -> int:
        return int(result.get(self.epoch_key, result.get(TRAINING_ITERATION, 0)))

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if isinstance(self.metric, list) or trial_id in self._completed_trials:
            return super().on_trial_result(trial_id, result)
        value = result.get(self.metric)
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None or value is None:
            return
        step = self._epoch(result)
        if step in ot_trial._cached_frozen_trial.intermediate_values:
            return  # an epoch reported again after a restore from checkpoint
        ot_trial.report(float(value), step=step)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if isinstance(self.metric, list):
            return super().on_trial_complete(trial_id, result, error)
        if trial_id in self._completed_trials:
            logger.warning("trial %s completed twice; ignoring the second report", trial_id)
            return
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None:
            return
        value = result.get(self.metric) if result else None
        if result and value is not None and not error:
            # Ray skips on_trial_result for the result that ends a trial (ASHA's STOP or the
            # last epoch), so that epoch reaches Optuna here.
            self.on_trial_result(trial_id, result)
        if error:
            state, values = TrialState.FAIL, None
        elif value is not None and self._epoch(result) >= self.max_epochs:
            state, values = TrialState.COMPLETE, float(value)
        else:
            # Stopped before max_epochs without an error: ASHA (or a time budget) cut it short.
            state, values = TrialState.PRUNED, None
        if state == TrialState.COMPLETE and not math.isfinite(values):
            state, values = TrialState.FAIL, None
        self._ot_study.tell(ot_trial, values, state=state)
        self._completed_trials.add(trial_id)
