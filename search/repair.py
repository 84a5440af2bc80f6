"""Make a stopped sweep's saved state agree with its trial folders before `Tuner.restore`.

Ray writes each trial's `result.json` row as the result arrives (the row that ends a trial
carries `done: true`) and its checkpoints as the trial writes them, but saves its trial table
and search state (`search.saved_state`) only every `TUNE_GLOBAL_CHECKPOINT_S` seconds, and
deletes checkpoints beyond `num_to_keep` as soon as a newer one is registered. A driver stopped
in between leaves a saved state that Ray would resume wrongly; `prepare_resume` repairs it:

- `reconcile`: a trial the table calls unfinished whose last row says it is done is marked
  TERMINATED and told to the searcher (it would train again), local or on a bucket; locally, an
  unfinished one continues from its newest checkpoint on disk, and a folder the table does not
  list is removed (unfinished: it restarts under a new id) or, finished, moved to
  `NAME/orphans/` with a note;
- `repair_missing_checkpoints`: a trial whose latest checkpoint is gone (Ray's stale-checkpoint
  issue) is pointed at its newest one that exists, or none, instead of failing every retry;
- `rebase_search_state` and `rebase_journal` (local): a moved or copied experiment's new trials
  are created, and its study kept, where it is;
- `align_search_counter` and `abandon_unlisted_trials`: a state saved part-way (on a bucket,
  uploaded file by file) counts or asks for trials the table does not hold;
- `set_num_samples`: a --resume with a larger --num-samples.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from search import saved_state as saved
from search.optuna_pruned import (
    SEARCHER_GLOB,
    PrunedOptunaSearch,
    missing_journal,
    rebase_state,
    torn_journal,
)
from search.ray_checkpoints import drop_missing, to_newest_checkpoint
from search.search_gen import align_search_counter, free_slots, rebase_search_state, set_num_samples
from search.storage import is_uri
from trainables.experiment import (
    OPTUNA_JOURNAL,
    TERMINAL_STATUSES,
    read_results,
    trial_dirs,
)

ORPHANS_DIR = "orphans"


def prepare_resume(experiment_path: str, max_epochs: int, num_samples: int | None) -> list[str]:
    """Everything a resume fixes in the saved state first; one line per change, to print."""
    local = not is_uri(experiment_path)
    notes = []
    if local:
        notes += saved.set_aside_torn(Path(experiment_path))
        notes += rebase_search_state(Path(experiment_path))
        notes += rebase_journal(Path(experiment_path))
    notes += reconcile(experiment_path, max_epochs)
    notes += repair_missing_checkpoints(experiment_path)
    notes += align_search_counter(experiment_path)
    notes += abandon_unlisted_trials(experiment_path)
    if num_samples and local:
        notes += set_num_samples(experiment_path, num_samples)
    return notes


def resume_problem(experiment_dir: Path) -> str | None:
    """Why a local experiment's saved state cannot resume (a torn Ray trial table, a missing
    or torn Optuna journal), as one line naming the file and what to do; None when it can."""
    try:
        saved.saved_state(str(experiment_dir))
    except ValueError as err:
        return str(err)
    return missing_journal(experiment_dir) or torn_journal(experiment_dir / OPTUNA_JOURNAL)


def reconcile(experiment_path: str | Path, max_epochs: int) -> list[str]:
    """Make Ray's saved trial table and searcher agree with the trial folders (module doc);
    on a bucket, only trials that finished after the save (folders are moved only here)."""
    state = saved.saved_state(str(experiment_path))
    if state is None:
        return []
    fs, state_file, table = state
    root, local = state_file.rsplit("/", 1)[0], not is_uri(str(experiment_path))
    listed, finished, notes = set(), {}, []
    for entry in table.get("trial_data", []):
        trial, meta = json.loads(entry[0]), json.loads(entry[1])
        dir_name = Path(trial.get("relative_logdir") or "").name
        listed.add(dir_name)
        if trial.get("status") in TERMINAL_STATUSES:
            continue
        rows = saved.trial_results(fs, f"{root}/{dir_name}").rows
        if _is_done(rows, max_epochs):
            trial["status"], meta["last_result"] = "TERMINATED", rows[-1]
            finished[str(trial.get("trial_id"))] = rows
            epoch = int(rows[-1].get("epoch") or 0)
            note = f"finished (epoch {epoch}) after Ray's last save of its state: recorded as "
            note += "finished, not trained again"
        else:
            note = to_newest_checkpoint(trial, meta, Path(root, dir_name), rows) if local else None
        if note:
            entry[0], entry[1] = json.dumps(trial), json.dumps(meta)
            notes.append(f"trial {trial.get('trial_id')} {note}")
    if notes:
        saved.write(fs, state_file, json.dumps(table).encode())
    notes += _tell_searcher(str(experiment_path), fs, root, finished)
    return notes + (_orphans(Path(root), listed, max_epochs) if local else [])


def _is_done(rows: list[dict[str, Any]], max_epochs: int) -> bool:
    return bool(rows) and (
        bool(rows[-1].get("done")) or int(rows[-1].get("epoch") or 0) >= max_epochs
    )


def _tell_searcher(
    experiment_path: str, fs: Any, root: str, finished: dict[str, list[dict[str, Any]]]
) -> list[str]:
    """Report each finished trial's epochs and end to the study (its journal), and free its
    concurrency slot, as Ray would have had the driver lived."""
    if not finished:
        return []
    free_slots(experiment_path, set(finished))
    newest = saved.newest(fs, root, SEARCHER_GLOB.split("*")[0])
    if newest is None:
        return []
    searcher = PrunedOptunaSearch.from_state(saved.read(fs, newest), newest)
    for trial_id, rows in finished.items():
        for row in rows[:-1]:
            searcher.on_trial_result(trial_id, row)
        searcher.on_trial_complete(trial_id, result=rows[-1])
    return [f"the searcher was told of {len(finished)} finished trial(s)"]


def _orphans(experiment_dir: Path, listed: set[str], max_epochs: int) -> list[str]:
    notes = []
    for trial_dir in (d for d in trial_dirs(experiment_dir) if d.name not in listed):
        rows = read_results(trial_dir).rows
        if _is_done(rows, max_epochs):
            target = experiment_dir / ORPHANS_DIR / trial_dir.name
            target.parent.mkdir(exist_ok=True)
            trial_dir.rename(target)
            what = f"finished after Ray's last save and is unknown to it: moved to {target} (kept"
            what += ", not part of the sweep)"
        else:
            shutil.rmtree(trial_dir)
            what = f"started after Ray's last save ({len(rows)} epoch(s), not finished) and is "
            what += "unknown to it: removed; a new trial takes its place"
        notes.append(f"{trial_dir.name} {what}")
    return notes


def rebase_journal(experiment_dir: Path) -> list[str]:
    """The saved searcher names the journal where the experiment was saved: a moved or copied
    one reads and writes the journal beside it instead."""
    newest = max(experiment_dir.glob(SEARCHER_GLOB), default=None)
    note = rebase_state(newest, experiment_dir / OPTUNA_JOURNAL) if newest else None
    return [note] if note else []


def abandon_unlisted_trials(experiment_path: str) -> list[str]:
    """A searcher saved after it asked for a trial the table (saved before) does not hold: Ray
    will never run it, so it is told to Optuna as FAIL, abandoned, and forgotten."""
    table = saved.table_and(experiment_path, SEARCHER_GLOB)
    if table is None:
        return []
    fs, trials, searcher_file, data = table
    searcher = PrunedOptunaSearch.from_state(data, searcher_file)
    gone = sorted(set(searcher.trials) - {str(t.get("trial_id")) for t in trials})
    if not gone:
        return []
    try:
        searcher.abandon(gone)
    except OSError as err:  # the study's journal is not on this machine
        return [f"trial(s) {', '.join(gone)} left RUNNING in the Optuna study: {err}"]
    saved.write(fs, searcher_file, searcher.state_bytes())
    return [
        f"trial(s) {', '.join(gone)} were asked for after Ray's last saved trial table and will "
        f"not run: told to Optuna as abandoned (FAIL)"
    ]


def repair_missing_checkpoints(experiment_path: str) -> list[str]:
    """Point every trial whose latest saved checkpoint is gone at its newest one that exists
    (or none: it restarts from epoch 1); one line per trial, to print."""
    state = saved.saved_state(experiment_path)
    if state is None:
        return []
    fs, newest, table = state
    notes = [n for entry in table.get("trial_data", []) if (n := drop_missing(entry, newest))]
    if notes:
        saved.write(fs, newest, json.dumps(table).encode())
    return notes
