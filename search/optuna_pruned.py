"""The sweep's searcher: Optuna's ask/tell API driven by Ray Tune, Optuna's journal the record.

Ray asks for a trial (`suggest`): the study is asked (`Study.ask`, an enqueued point first) and
the space's define-by-run function fills the trial. Each epoch's result is reported as the
trial's intermediate value at that epoch (`result["epoch"]`, which survives a restore from a
checkpoint), including the result that ends a trial: Ray's controller does not call
`on_trial_result` for it (ASHA's STOP or the last epoch), only `on_trial_complete`.

A trial that reached `max_epochs` is told COMPLETE with its best epoch's value
(`trainables.experiment.best_epoch_row`: the rule export and report rank by); one that ended
before without an error (ASHA, a time budget) is PRUNED, and Optuna takes its last intermediate
value as its value, as TPE treats trials a pruner stopped; an errored one is FAIL. Every
finished trial carries `ray_trial_id`, `epochs`, `best_epoch` and `best_value` (and a
multi-label sweep's per-finding scores) as user attributes.

The study lives in the experiment's journal (`journal_storage`: Optuna's `JournalStorage` on a
file, study name = experiment name), so `optuna.load_study` and `optuna-dashboard` open it. The
journal is the search's record: what Ray saves of this searcher (`save`, JSON) is the map from
its trial ids to Optuna trial numbers, with the sampler pickled as Optuna's FAQ says to resume
its random state, and the journal's path (`rebase_state` re-points it where a moved or copied
experiment is now). `restore` re-opens the journal and reconciles: trials the journal
finished after the save stay finished, and trials asked after it, which Ray never saw and will
not run, are told FAIL as abandoned (an enqueued point among them is enqueued again).
"""

from __future__ import annotations

import base64
import json
import math
import pickle
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.air.constants import TRAINING_ITERATION
from ray.tune.search import Searcher

from trainables.cache import atomic_write_bytes
from trainables.experiment import COMPLETED, ERRORED, OPTUNA_JOURNAL, best_epoch_row, trial_outcome
from trainables.vocab import PER_FINDING_PREFIXES

# A journal lock older than this is a stopped writer's: Optuna releases it (its own mechanism).
# Appends take milliseconds, and the experiment lock keeps a second driver away.
JOURNAL_LOCK_GRACE_S = 5
STATE_VERSION = 1
SEARCHER_GLOB = "searcher-state-*.pkl"  # Ray's Searcher.save_to_dir names (JSON here)
SETTINGS = ("metric", "mode", "max_epochs", "study_name", "journal_file", "epoch_key")


class PrunedOptunaSearch(Searcher):
    """Ray's searcher over an Optuna study, on Optuna's public ask/tell and storage APIs (the
    storage is the one this searcher made: `storage`)."""

    def __init__(
        self,
        space: Callable[[Any], dict[str, Any] | None] | None,
        metric: str,
        mode: str,
        *,
        sampler: optuna.samplers.BaseSampler,
        max_epochs: int,
        study_name: str,
        journal_file: str = "",
        points_to_evaluate: list[dict[str, Any]] | None = None,
        epoch_key: str = "epoch",
    ):
        super().__init__(metric=metric, mode=mode)
        self.space = space  # the space's define-by-run function
        self.sampler = sampler
        self.max_epochs = max_epochs  # epochs, = ASHA max_t
        self.study_name = study_name
        self.journal_file = str(journal_file)  # the study's journal ("": in memory)
        self.epoch_key = epoch_key
        self.trials: dict[str, int] = {}  # Ray trial id -> Optuna trial number
        self._open: tuple[optuna.Study, Any, int] | None = None  # study, storage, study id
        for point in points_to_evaluate or ():
            self.study.enqueue_trial(point)

    def _opened(self) -> tuple[optuna.Study, Any, int]:
        if self._open is None:
            if self.journal_file:
                storage = journal_storage(self.journal_file)
            else:
                storage = optuna.storages.InMemoryStorage()
            study = optuna.create_study(
                storage=storage,
                sampler=self.sampler,
                pruner=optuna.pruners.NopPruner(),
                study_name=self.study_name,
                direction="minimize" if self.mode == "min" else "maximize",
                load_if_exists=True,
            )
            self._open = (study, storage, storage.get_study_id_from_name(self.study_name))
        return self._open

    @property
    def study(self) -> optuna.Study:
        return self._opened()[0]

    @property
    def storage(self) -> Any:
        return self._opened()[1]

    def _trial_id(self, number: int) -> int:
        """Optuna's storage id of the study's trial `number`."""
        study_id = self._opened()[2]
        return self.storage.get_trial_id_from_study_id_trial_number(study_id, number)

    def _frozen(self, number: int) -> optuna.trial.FrozenTrial:
        return self.storage.get_trial(self._trial_id(number))

    def __getstate__(self) -> dict[str, Any]:
        """Pickled in Ray's tuner.pkl: a journal's study is re-opened from its file."""
        return self.__dict__ | ({"_open": None} if self.journal_file else {})

    def _epoch(self, result: dict[str, Any]) -> int:
        return int(result.get(self.epoch_key, result.get(TRAINING_ITERATION, 0)))

    def suggest(self, trial_id: str) -> dict[str, Any]:
        trial = self.study.ask()  # an enqueued point first
        self.trials[trial_id] = trial.number
        constants = self.space(trial) if self.space else None
        return {**trial.params, **(constants or {})}

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        value, number = result.get(self.metric), self.trials.get(trial_id)
        if number is None or value is None:
            return
        frozen, step = self._frozen(number), self._epoch(result)
        if frozen.state.is_finished() or step in frozen.intermediate_values:
            return  # finished in the journal, or an epoch reported again after a restore
        self.storage.set_trial_intermediate_value(self._trial_id(number), step, float(value))

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        number = self.trials.get(trial_id)
        if number is None:
            return
        value = result.get(self.metric) if result else None
        if value is not None and not error:
            self.on_trial_result(trial_id, result or {})  # the epoch that ended the trial
        frozen = self._frozen(number)
        if frozen.state.is_finished():
            return  # told before (before a restore, or twice)
        epochs = self._epoch(result) if result else 0
        best = self._best_epoch(frozen.intermediate_values)
        state, values = self._verdict(epochs, value, best, error)
        attrs: dict[str, Any] = {"ray_trial_id": trial_id, "epochs": epochs}
        if best:
            attrs |= {"best_epoch": best[0], "best_value": best[1]}
        for key, v in (result or {}).items():  # multi-label: per-finding AUROC / AP, last epoch
            if key.startswith(PER_FINDING_PREFIXES) and isinstance(v, float) and math.isfinite(v):
                attrs[key] = v
        for key, v in attrs.items():
            self.storage.set_trial_user_attr(self._trial_id(number), key, v)
        self.study.tell(number, values, state=state)

    def _verdict(
        self, epochs: int, value: Any, best: tuple[int, float] | None, error: bool
    ) -> tuple[TrialState, float | None]:
        """COMPLETE with the best epoch's value at max_epochs, FAIL on an error or a
        non-finite value, PRUNED when it ended before max_epochs (ASHA or a budget)."""
        how = trial_outcome(None, epochs, self.max_epochs, error)
        if how == ERRORED:
            return TrialState.FAIL, None
        if how != COMPLETED or value is None:
            return TrialState.PRUNED, None
        final = best[1] if best else float(value)
        return (TrialState.COMPLETE, final) if math.isfinite(final) else (TrialState.FAIL, None)

    def _best_epoch(self, values: dict[int, float]) -> tuple[int, float] | None:
        """(epoch, value) of the trial's best intermediate value by the sweep's rule."""
        rows = [{"epoch": e, self.metric: v} for e, v in values.items()]
        best = best_epoch_row(rows, self.metric, self.mode)
        return None if best is None else (best[0], float(best[1][self.metric]))

    def save(self, checkpoint_path: str) -> None:
        """The Ray-facing state: trial ids to Optuna numbers, and the sampler (Optuna's FAQ:
        pickle a sampler to resume its random state)."""
        Path(checkpoint_path).write_bytes(self.state_bytes())

    def state_bytes(self) -> bytes:
        settings = {k: getattr(self, k) for k in SETTINGS}
        sampler = base64.b64encode(pickle.dumps(self.sampler)).decode()
        state = {"version": STATE_VERSION, **settings, "trials": self.trials, "sampler": sampler}
        return json.dumps(state).encode()

    @classmethod
    def from_state(cls, data: bytes, where: str) -> PrunedOptunaSearch:
        """A saved searcher, without its space (to tell results and abandon trials)."""
        state = read_state(data, where)
        searcher = cls(
            None,
            state["metric"],
            state["mode"],
            sampler=None,
            **{k: state[k] for k in SETTINGS if k not in ("metric", "mode")},
        )
        searcher.load(state)
        return searcher

    def restore(self, checkpoint_path: str) -> None:
        """Ray's saved state (from Ray's staging copy), the study re-opened from the journal
        it names; then `reconcile`."""
        self.load(read_state(Path(checkpoint_path).read_bytes(), checkpoint_path))

    def load(self, state: dict[str, Any]) -> None:
        self.trials = {str(k): int(v) for k, v in state["trials"].items()}
        self.sampler = pickle.loads(base64.b64decode(state["sampler"]))
        self.journal_file = state["journal_file"]
        self._open = None
        self.reconcile()

    def reconcile(self) -> None:
        """Abandon every unfinished study trial Ray does not know (asked after its save)."""
        known = set(self.trials.values())
        for frozen in self.study.get_trials(deepcopy=False):
            if frozen.number not in known:
                self._abandon(frozen)

    def abandon(self, ray_ids: Iterable[str]) -> int:
        """Forget trials Ray will never run (asked after its saved trial table was written):
        each unfinished one is told FAIL as abandoned. Returns how many were forgotten."""
        forgotten = [self.trials.pop(i) for i in ray_ids if i in self.trials]
        for number in forgotten:
            self._abandon(self._frozen(number))
        return len(forgotten)

    def _abandon(self, frozen: optuna.trial.FrozenTrial) -> None:
        """FAIL a RUNNING study trial no Ray trial will finish (an enqueued point is queued
        again: Ray will ask for it anew)."""
        if frozen.state != TrialState.RUNNING:
            return
        trial_id = self._trial_id(frozen.number)
        self.storage.set_trial_user_attr(trial_id, "abandoned", "asked by a driver that stopped")
        self.study.tell(frozen.number, state=TrialState.FAIL)
        if "fixed_params" in frozen.system_attrs:
            self.study.enqueue_trial(frozen.system_attrs["fixed_params"])


def read_state(data: bytes, where: str = "the searcher state") -> dict[str, Any]:
    """A saved searcher state, or a one-line refusal naming the file."""
    try:
        state = json.loads(data)
    except ValueError:
        state = None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise ValueError(
            f"{where}: not a cxr-tune searcher state (version {STATE_VERSION}): it is torn or "
            f"was written by another version; resume with the version that wrote it, or start "
            f"a new --name"
        )
    return state


def rebase_state(path: Path, journal: Path) -> str | None:
    """Point a saved searcher state at `journal` (a moved or copied experiment's, whose saved
    state names the journal where it was saved: a copy's would append to the original's); a
    line to print, or None when it already does."""
    state = read_state(path.read_bytes(), str(path))
    recorded = state["journal_file"]
    if not recorded or recorded == str(journal):
        return None
    if not journal.is_file():
        raise FileNotFoundError(missing_journal(journal.parent))
    atomic_write_bytes(path, json.dumps(state | {"journal_file": str(journal)}).encode())
    return f"the Optuna study is read from {journal}, not {recorded}"


def journal_storage(path: str | Path) -> optuna.storages.JournalStorage:
    """Optuna's JournalStorage on a file (created with its folder when missing), its lock
    released by Optuna when a stopped writer left it (`JOURNAL_LOCK_GRACE_S`)."""
    from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = JournalFileSymlinkLock(str(path), grace_period=JOURNAL_LOCK_GRACE_S)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path), lock_obj=lock))


def missing_journal(experiment_dir: Path) -> str | None:
    """Why a local experiment cannot resume without its Optuna journal, or None when it can
    (the saved searcher's study lives there; a fresh one would forget every trial)."""
    journal = experiment_dir / OPTUNA_JOURNAL
    if journal.is_file() or not any(experiment_dir.glob(SEARCHER_GLOB)):
        return None
    return (
        f"{journal}: the experiment's Optuna study journal is missing; copy "
        f"{OPTUNA_JOURNAL} along with the experiment folder, or start a new --name"
    )


def torn_journal(journal: Path) -> str | None:
    """Why the Optuna journal cannot be appended to, or None when it can.

    Optuna writes one JSON record per line. A write cut short (a full disk, a crash) leaves a
    last line without its newline: Optuna's reader skips it, but its next append would be glued
    to it, and every read after that fails. That line is not cut away here: the user decides,
    with the byte offset of the last whole record given.
    """
    if not journal.is_file():
        return None
    lines = journal.read_bytes().split(b"\n")
    offset = 0
    for number, line in enumerate(lines[:-1], start=1):
        try:
            json.loads(line)
        except ValueError:
            return (
                f"{journal}: line {number} is not an Optuna journal record; the study cannot be "
                f"read: restore the file from a copy, or start a new --name"
            )
        offset += len(line) + 1
    if not lines[-1]:
        return None
    return (
        f"{journal}: its last record is cut short after byte {offset} (a write stopped by a "
        f"full disk or a crash); Optuna would append to the cut record: cut it away with "
        f"`truncate -s {offset} {journal}` to resume without it, or start a new --name"
    )
