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

A COMPLETE trial's value is its best epoch (`trainables.experiment.best_epoch_row`: the rule
export and report rank by), not its last; every finished trial carries `best_epoch`,
`best_value`, `epochs` and `ray_trial_id` as user attributes (a PRUNED trial's value stays
Optuna's own: its last intermediate value).

The study lives on disk (`journal_storage`: Optuna's `JournalStorage` with a file backend, study
name = experiment name), so `optuna.load_study` and `optuna-dashboard` open it. Ray saves this
searcher by pickling it, storage included; the journal may be ahead of that pickle when a
driver stopped, so `restore` re-reads the journal and reconciles: trials the journal finished
after the save stay finished (a second report or tell is skipped), and trials asked after the
save, which Ray never saw and will not run, are told FAIL so none is left RUNNING (an enqueued
point among them is enqueued again, as the pickled study would still hold it).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.air.constants import TRAINING_ITERATION
from ray.tune.search.optuna import OptunaSearch

from trainables.experiment import COMPLETED, ERRORED, best_epoch_row, trial_outcome
from trainables.vocab import PER_FINDING_PREFIXES

logger = logging.getLogger(__name__)


class PrunedOptunaSearch(OptunaSearch):
    """`OptunaSearch` with per-epoch reports and PRUNED/COMPLETE/FAIL told honestly.

    It reads the study through Optuna's public API only (`Study.get_trials`, `Study.tell`, and
    the journal storage it was given, kept as `journal`: pickled with the searcher, it stays the
    study's own storage object). It extends Ray's OptunaSearch, whose state (`_ot_trials`,
    `_ot_study`, `_completed_trials`, checked on Ray 2.60.0) it uses as a subclass."""

    def __init__(
        self,
        *args: Any,
        max_epochs: int,
        epoch_key: str = "epoch",
        journal_file: str = "",
        **kwargs: Any,
    ):
        self.max_epochs = max_epochs  # epochs, = ASHA max_t
        self.epoch_key = epoch_key
        self.journal_file = str(journal_file)  # the study's journal ("": in memory)
        self.journal = journal_storage(journal_file) if journal_file else None
        if self.journal is not None:
            kwargs["storage"] = self.journal
        super().__init__(*args, **kwargs)

    def _frozen(self, ot_trial: Any) -> Any:
        """The study's current record of a trial (the journal may be ahead of the pickle)."""
        return self._ot_study.get_trials(deepcopy=False)[ot_trial.number]

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
        frozen = self._frozen(ot_trial)
        if step in frozen.intermediate_values:
            return  # an epoch reported again after a restore from checkpoint
        if frozen.state.is_finished():
            return  # finished in the journal after Ray's last save of this searcher
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
        if self._finished_in_storage(ot_trial):
            self._completed_trials.add(trial_id)
            return
        best = self._best_epoch(ot_trial)
        how = trial_outcome(None, self._epoch(result) if result else 0, self.max_epochs, error)
        if how == ERRORED:
            state, values = TrialState.FAIL, None
        elif value is not None and how == COMPLETED:
            # The sweep ranks a trial by its best epoch (export and report do too).
            state, values = TrialState.COMPLETE, best[1] if best else float(value)
        else:
            # Stopped before max_epochs without an error: ASHA (or a time budget) cut it short.
            state, values = TrialState.PRUNED, None
        if state == TrialState.COMPLETE and not math.isfinite(values):
            state, values = TrialState.FAIL, None
        ot_trial.set_user_attr("ray_trial_id", trial_id)
        ot_trial.set_user_attr("epochs", self._epoch(result) if result else 0)
        if best:
            ot_trial.set_user_attr("best_epoch", best[0])
            ot_trial.set_user_attr("best_value", best[1])
        for key, v in (result or {}).items():  # multi-label: per-finding AUROC / AP, last epoch
            if key.startswith(PER_FINDING_PREFIXES) and isinstance(v, float) and math.isfinite(v):
                ot_trial.set_user_attr(key, v)
        self._ot_study.tell(ot_trial, values, state=state)
        self._completed_trials.add(trial_id)

    def _best_epoch(self, ot_trial: Any) -> tuple[int, float] | None:
        """(epoch, value) of the trial's best intermediate value by the sweep's rule."""
        frozen = self._frozen(ot_trial)
        rows = [{"epoch": e, self.metric: v} for e, v in frozen.intermediate_values.items()]
        best = best_epoch_row(rows, self.metric, self.mode)
        return None if best is None else (best[0], float(best[1][self.metric]))

    def _finished_in_storage(self, ot_trial: Any) -> bool:
        return self._frozen(ot_trial).state.is_finished()

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        if getattr(self, "journal", None) is not None:  # None: saved before it was kept
            self._reconcile_with_journal()

    def abandon(self, ray_ids: Iterable[str]) -> int:
        """Forget trials Ray will never run (asked after its saved trial table was written):
        each unfinished one is told FAIL as abandoned, so none stays RUNNING in the study.
        Returns how many were forgotten."""
        forgotten = 0
        for ray_id in ray_ids:
            ot_trial = self._ot_trials.pop(ray_id, None)
            if ot_trial is not None:
                forgotten += 1
                self._abandon(self._frozen(ot_trial))
        return forgotten

    def _abandon(self, frozen: Any) -> None:
        """FAIL a RUNNING study trial no Ray trial will finish (an enqueued point is queued
        again, as the pickled study would still hold it)."""
        if frozen.state != TrialState.RUNNING or self.journal is None:
            return
        storage = self.journal
        study_id = storage.get_study_id_from_name(self._ot_study.study_name)
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, frozen.number)
        why = "asked by a driver that stopped first"
        storage.set_trial_user_attr(trial_id, "abandoned", why)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        if "fixed_params" in frozen.system_attrs:
            self._ot_study.enqueue_trial(frozen.system_attrs["fixed_params"])

    def _reconcile_with_journal(self) -> None:
        """Bring the restored trials in line with the journal (module docstring)."""
        known = {t.number: ray_id for ray_id, t in self._ot_trials.items()}
        for frozen in self._ot_study.get_trials(deepcopy=False):
            ray_id = known.get(frozen.number)
            if ray_id is None:
                self._abandon(frozen)
                continue
            if frozen.state.is_finished():
                self._completed_trials.add(ray_id)


def journal_storage(path: str | Path) -> optuna.storages.JournalStorage:
    """Optuna's JournalStorage on a file (created with its folder when missing)."""
    from optuna.storages.journal import JournalFileBackend

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
