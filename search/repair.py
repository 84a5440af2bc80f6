"""Make a killed sweep's saved state safe and exact to resume.

`prepare_resume` runs before `Tuner.restore`: `rebase_search_state` and `rebase_journal` (a
moved or copied experiment's saved search names the folder it was saved in), `reconcile` (the
trial table against the trial folders), `repair_missing_checkpoints`, `align_search_counter`
(a state uploaded part-way to a bucket), and `set_num_samples` (a --resume with more trials).

What Ray persists, and when: each trial's `result.json` row is written by the driver as the
result arrives (the row that ends a trial carries `done: true`: ASHA's STOP, including at
max_t), checkpoints as the trial writes them, but the trial table (`experiment_state-*.json`)
and the searcher's state (`searcher-state-*.pkl`, `search_gen_state-*.json`) only every
`TUNE_GLOBAL_CHECKPOINT_S` seconds. A driver SIGKILLed in between leaves trials that finished
on disk marked RUNNING in the table and live in the searcher (Ray would train them again), and
trial folders the table never heard of. `reconcile` makes the saved state agree with the
folders, for local storage:

- a trial the table calls unfinished whose last row says it is done is marked TERMINATED with
  that row as its last result, and the searcher is told (its epochs reported, then completed:
  Optuna records it PRUNED or COMPLETE, the concurrency limiter frees its slot);
- a trial folder the table does not list (started after the last save): one that never
  finished is removed (it restarts under a new id, from scratch: the table held no checkpoint of
  it); one that finished is moved to `NAME/orphans/` (kept, not part of the sweep) with a note;
- an unfinished trial the table lists continues from its newest checkpoint on disk (the
  table is re-pointed at it when that checkpoint was written after the last save);
  `repair_missing_checkpoints` makes sure the one it names still exists, looking where the
  experiment is now (a moved experiment's table names its old place).

Ray deletes a trial's checkpoints beyond `num_to_keep` the moment a newer one is registered, but
saves (and uploads) the experiment state only every so often. A driver killed between the two
leaves a state whose "latest checkpoint" of a running trial is already gone, and
`Tuner.restore` then fails that trial on every retry ("does not exist on storage anymore").

Before a resume, `repair_missing_checkpoints` points every such trial at its newest checkpoint
that still exists in storage (or at none, so it restarts from epoch 1), and rewrites the state
file atomically. Nothing is deleted. The state file is the one this sweep's own driver wrote,
so reading its embedded pickles is no more trusting than `Tuner.restore` itself.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import pyarrow.fs
from ray import cloudpickle

from trainables.cache import atomic_write_bytes
from trainables.experiment import (
    OPTUNA_JOURNAL,
    TERMINAL_STATUSES,
    epoch_rows,
    find_checkpoints,
    newest_ray_state,
    parse_ray_state,
    ray_state_trials,
    read_results,
    trial_dirs,
)

PICKLED = "CLOUDPICKLE_FALLBACK"
SEARCHER_GLOB = "searcher-state-*.pkl"  # Ray's OptunaSearch.save_to_dir
SEARCH_GEN_GLOB = "search_gen_state-*.json"  # Ray's SearchGenerator (a pickle despite .json)
LIMITER_KEY = "name:ConcurrencyLimiter"
ORPHANS_DIR = "orphans"
JOURNAL_LOCK_SUFFIX = ".lock"  # optuna.storages.journal's LOCK_FILE_SUFFIX


def prepare_resume(experiment_path: str, max_epochs: int, num_samples: int | None) -> list[str]:
    """Everything a resume fixes in the saved state first; one line per change, to print."""
    notes = []
    if "://" not in experiment_path:
        notes += set_aside_torn_pickles(Path(experiment_path))
        notes += rebase_search_state(Path(experiment_path))
        notes += rebase_journal(Path(experiment_path))
        notes += reconcile(Path(experiment_path), max_epochs)
    notes += repair_missing_checkpoints(experiment_path)
    notes += align_search_counter(experiment_path)
    notes += abandon_unlisted_trials(experiment_path)
    if num_samples and "://" not in experiment_path:
        notes += set_num_samples(Path(experiment_path), num_samples)
    return notes


def reconcile(experiment_dir: Path, max_epochs: int) -> list[str]:
    """Make Ray's saved trial table and searcher agree with the trial folders (module doc)."""
    saved = saved_state(str(experiment_dir))
    if saved is None:
        return []
    fs, state_file, state = saved
    listed, finished, notes, changed = set(), {}, [], False
    for entry in state.get("trial_data", []):
        trial, meta = json.loads(entry[0]), json.loads(entry[1])
        trial_id, dir_name = str(trial.get("trial_id")), Path(trial.get("relative_logdir") or "")
        listed.add(dir_name.name)
        rows = read_results(experiment_dir / dir_name).rows
        if trial.get("status") in TERMINAL_STATUSES:
            continue
        if not _is_done(rows, max_epochs):
            note = _to_newest_checkpoint(trial, meta, experiment_dir / dir_name, rows)
            if note:
                entry[1] = json.dumps(meta)
                changed = True
                notes.append(note)
            continue
        trial["status"], meta["last_result"] = "TERMINATED", rows[-1]
        entry[0], entry[1] = json.dumps(trial), json.dumps(meta)
        finished[trial_id] = rows
        notes.append(
            f"trial {trial_id} finished (epoch {epoch_rows(rows).popitem()[0]}) after Ray's last "
            f"save of its state: recorded as finished, not trained again"
        )
    if finished or changed:
        _write(fs, state_file, json.dumps(state).encode())
    if finished:
        notes += _tell_searcher(experiment_dir, finished)
    return notes + _orphans(experiment_dir, listed, max_epochs)


def _to_newest_checkpoint(
    trial: dict[str, Any], meta: dict[str, Any], trial_dir: Path, rows: list[dict[str, Any]]
) -> str | None:
    """Point an unfinished trial at its newest checkpoint on disk when that is newer than the
    one Ray's saved table records (it was written after the last save)."""
    from ray.train._internal.session import _TrainingResult
    from ray.tune import Checkpoint

    blob = meta.get("checkpoint_manager")
    old_root = _recorded_experiment_path(trial)
    if not isinstance(blob, dict) or blob.get("_type") != PICKLED or not old_root:
        return None
    manager = cloudpickle.loads(bytes.fromhex(blob["value"]))
    epochs = epoch_rows(rows)
    on_disk = find_checkpoints(trial_dir, epochs)
    if not on_disk:
        return None
    epoch = max(on_disk)
    row = epochs.get(epoch)
    latest = manager._latest_checkpoint_result
    if row is None or (
        latest is not None and _iteration(latest) >= int(row.get("training_iteration", epoch))
    ):
        return None
    # Ray re-points saved paths from the place it saved them to the current one on restore.
    path = f"{old_root.rstrip('/')}/{trial_dir.name}/{on_disk[epoch].name}"
    filesystem = latest.checkpoint.filesystem if latest else pyarrow.fs.LocalFileSystem()
    result = _TrainingResult(checkpoint=Checkpoint(path, filesystem), metrics=row)
    manager._checkpoint_results.append(result)
    manager._latest_checkpoint_result = result
    meta["checkpoint_manager"] = {
        "_type": PICKLED,
        "value": cloudpickle.dumps(manager).hex(),
    }
    meta["last_result"] = row
    was = _iteration(latest) if latest else 0
    return (
        f"trial {trial.get('trial_id')}: continues from {on_disk[epoch].name} (epoch {epoch}), "
        f"written after Ray's last save (which had iteration {was})"
    )


def _is_done(rows: list[dict[str, Any]], max_epochs: int) -> bool:
    if not rows:
        return False
    last = rows[-1]
    return bool(last.get("done")) or int(last.get("epoch") or 0) >= max_epochs


def _tell_searcher(experiment_dir: Path, finished: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Report each finished trial's epochs and its end to the saved searcher, and free its
    concurrency slot, as Ray would have had the driver lived."""
    notes = []
    searcher_files = sorted(experiment_dir.glob(SEARCHER_GLOB))
    if searcher_files:
        from search.optuna_pruned import PrunedOptunaSearch

        searcher = PrunedOptunaSearch.__new__(PrunedOptunaSearch)  # state only, as Ray restores
        searcher.__dict__.update(pickle.loads(searcher_files[-1].read_bytes()))
        for trial_id, rows in finished.items():
            for row in rows[:-1]:
                searcher.on_trial_result(trial_id, row)
            searcher.on_trial_complete(trial_id, result=rows[-1])
        _atomic_write(searcher_files[-1], pickle.dumps(searcher.__dict__.copy()))
        notes.append(f"the searcher was told of {len(finished)} finished trial(s)")
    gen_files = sorted(experiment_dir.glob(SEARCH_GEN_GLOB))
    if gen_files:
        gen = cloudpickle.loads(gen_files[-1].read_bytes())
        limiter = gen.get(LIMITER_KEY)
        if isinstance(limiter, dict) and "live_trials" in limiter:
            freed = set(finished) & set(limiter["live_trials"])
            limiter["live_trials"] = set(limiter["live_trials"]) - freed
            limiter["num_unfinished_live_trials"] = max(
                0, int(limiter.get("num_unfinished_live_trials", 0)) - len(freed)
            )
            _atomic_write(gen_files[-1], cloudpickle.dumps(gen))
    return notes


def _orphans(experiment_dir: Path, listed: set[str], max_epochs: int) -> list[str]:
    notes = []
    for trial_dir in trial_dirs(experiment_dir):
        if trial_dir.name in listed:
            continue
        rows = read_results(trial_dir).rows
        if _is_done(rows, max_epochs):
            target = experiment_dir / ORPHANS_DIR / trial_dir.name
            target.parent.mkdir(exist_ok=True)
            trial_dir.rename(target)
            notes.append(
                f"{trial_dir.name} finished after Ray's last save and is unknown to it: moved to "
                f"{target} (kept, not part of the sweep)"
            )
        else:
            shutil.rmtree(trial_dir)
            notes.append(
                f"{trial_dir.name} started after Ray's last save ({len(rows)} epoch(s), not "
                f"finished) and is unknown to it: removed; a new trial takes its place"
            )
    return notes


TORN_SUFFIX = ".torn"  # a torn save of Ray's, renamed out of its glob, kept for inspection


def set_aside_torn_pickles(experiment_dir: Path) -> list[str]:
    """Ray writes its searcher and search-generator saves in place, and restores from the
    newest by name: a driver killed mid-write leaves a newest file that is empty or cut short,
    and the resume would fail unpickling it. Such a newest file is renamed out of the glob
    (NAME.torn), so the resume continues from the save before it, as Ray would have had the
    write not begun; the repairs that follow align that save with Ray's trial table."""
    notes = []
    for pattern in (SEARCH_GEN_GLOB, SEARCHER_GLOB):
        files = sorted(experiment_dir.glob(pattern))
        while files and not _unpickles(files[-1]):
            torn = files.pop()
            torn.rename(torn.with_name(torn.name + TORN_SUFFIX))
            left = f"{files[-1].name} is used instead" if files else "none is left"
            notes.append(f"{torn.name} was cut short by the stop (renamed {TORN_SUFFIX}); {left}")
    return notes


def _unpickles(path: Path) -> bool:
    try:
        cloudpickle.loads(path.read_bytes())
    except Exception:  # any failure to load: empty, cut short, garbled
        return False
    return True


def rebase_search_state(experiment_dir: Path) -> list[str]:
    """Point the saved search at the experiment where it is now.

    Ray restores a moved or copied experiment's trials from its new place, but the search's
    saved state (`search_gen_state-*.json`) keeps the `Experiment` it was created with, and
    every trial it creates after the resume would write to the old place (and fail there when
    that place is gone). Its storage is re-pointed at `experiment_dir`.
    """
    gen_files = sorted(experiment_dir.glob(SEARCH_GEN_GLOB))
    if not gen_files:
        return []
    gen = cloudpickle.loads(gen_files[-1].read_bytes())
    storage = getattr(gen.get("experiment") if isinstance(gen, dict) else None, "storage", None)
    if storage is None or getattr(storage, "custom_fs_provided", False):
        return []
    recorded = Path(storage.storage_fs_path) / storage.experiment_dir_name
    if recorded == experiment_dir:
        return []
    storage.storage_fs_path = str(experiment_dir.parent)
    storage.experiment_dir_name = experiment_dir.name
    _atomic_write(gen_files[-1], cloudpickle.dumps(gen))
    return [f"new trials are written here, not to {recorded}"]


def rebase_journal(experiment_dir: Path) -> list[str]:
    """Point the saved searcher's Optuna study at the journal where the experiment is now.

    Ray pickles the searcher with its study, and the study's `JournalFileBackend` names the
    journal file it was created on: a moved experiment's searcher would read a journal that is
    gone, a copy's would append to the original's. The backend is replaced by one on
    `experiment_dir`'s journal (the storage object is shared by the study and every pickled
    trial, so all of them follow). A journal lock left by a killed driver is removed: the
    experiment's own lock, held by this resume, means no other driver writes this journal.
    """
    notes = []
    journal = experiment_dir / OPTUNA_JOURNAL
    stale_lock = journal.with_name(journal.name + JOURNAL_LOCK_SUFFIX)
    if stale_lock.is_symlink() or stale_lock.exists():
        stale_lock.unlink()
        notes.append(f"removed the Optuna journal lock {stale_lock} a stopped driver left")
    searcher_files = sorted(experiment_dir.glob(SEARCHER_GLOB))
    if not searcher_files:
        return notes
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    state = pickle.loads(searcher_files[-1].read_bytes())
    # The searcher keeps its study's storage and file (`PrunedOptunaSearch.journal`,
    # `journal_file`); a searcher saved before it kept them is left as it is.
    storage, recorded = state.get("journal"), state.get("journal_file")
    if not isinstance(storage, JournalStorage) or not recorded or Path(recorded) == journal:
        return notes
    if not journal.is_file():
        raise FileNotFoundError(missing_journal(experiment_dir, recorded))
    # Private (checked on Optuna 5.1.0): JournalStorage has no public way to change its file.
    # An Optuna that keeps the file elsewhere would make the assignment a silent no-op: refuse.
    if not isinstance(getattr(storage, "_backend", None), JournalFileBackend):
        raise RuntimeError(
            f"this Optuna ({optuna.__version__}) keeps a journal's file where cxr-tune does not "
            f"look (checked on 5.1): cannot move {recorded} to {journal}; resume where it was"
        )
    storage._backend = JournalFileBackend(str(journal))
    state["journal_file"] = str(journal)
    _atomic_write(searcher_files[-1], pickle.dumps(state))
    return notes + [f"the Optuna study is read from {journal}, not {recorded}"]


def missing_journal(experiment_dir: Path, recorded: Path | str = "") -> str | None:
    """Why a local experiment cannot resume without its Optuna journal, or None when it can
    (the saved searcher's study lives there; a fresh one would forget every trial)."""
    journal = experiment_dir / OPTUNA_JOURNAL
    if journal.is_file() or not any(experiment_dir.glob(SEARCHER_GLOB)):
        return None
    saved = f" (its saved searcher names {recorded})" if recorded else ""
    return (
        f"{journal}: the experiment's Optuna study journal is missing{saved}; copy "
        f"{OPTUNA_JOURNAL} along with the experiment folder, or start a new --name"
    )


def resume_problem(experiment_dir: Path) -> str | None:
    """Why a local experiment's saved state cannot resume (a missing or torn Optuna journal, a
    torn Ray trial table), as one line naming the file and what to do; None when it can."""
    try:
        saved_state(str(experiment_dir))
    except ValueError as err:
        return str(err)
    return missing_journal(experiment_dir) or torn_journal(experiment_dir / OPTUNA_JOURNAL)


def torn_journal(journal: Path) -> str | None:
    """Why the Optuna journal cannot be appended to, or None when it can.

    Optuna writes one JSON record per line. A write cut short (a full disk, a crash) leaves a
    last line without its newline: Optuna's reader skips it, but its next append would be glued
    to it, and every read after that fails. That line is not cut away here: the user decides,
    with the byte offset of the last whole record given.
    """
    if not journal.is_file():
        return None
    data = journal.read_bytes()
    lines = data.split(b"\n")
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


def set_num_samples(experiment_dir: Path, num_samples: int) -> list[str]:
    """Raise the saved search's trial count (a --resume with a larger --num-samples)."""
    gen_files = sorted(experiment_dir.glob(SEARCH_GEN_GLOB))
    if not gen_files:
        return []
    gen = cloudpickle.loads(gen_files[-1].read_bytes())
    if not isinstance(gen, dict) or int(gen.get("total_samples") or 0) >= num_samples:
        return []
    before = gen["total_samples"]
    gen["total_samples"], gen["finished"] = num_samples, False
    _atomic_write(gen_files[-1], cloudpickle.dumps(gen))
    return [f"the search now runs {num_samples} trials (was {before})"]


def _atomic_write(path: Path, data: bytes) -> None:
    atomic_write_bytes(path, data)


def align_search_counter(experiment_path: str) -> list[str]:
    """Make the saved search's trial counter agree with the trial table Ray restores from.

    Ray uploads its saved state file by file (`experiment_state-*.json`, then the searcher's
    files) to a URI storage; a driver killed between two uploads leaves a trial table newer
    or older than the search generator's `counter`. A counter below the table's trial count
    makes the resumed sweep create trials beyond `--num-samples`; one above it (a trial created
    after the table was saved, never restored) makes it stop short. The counter is set to the
    table's trial count, and the concurrency limiter keeps only trials the table still runs.
    """
    saved = _trial_table_and(experiment_path, SEARCH_GEN_GLOB)
    if saved is None:
        return []
    fs, trials, gen_file, data = saved
    gen = cloudpickle.loads(data)
    if not isinstance(gen, dict) or gen.get("counter") in (None, len(trials)):
        return []
    before, gen["counter"] = gen["counter"], len(trials)
    gen["finished"] = gen["counter"] >= int(gen.get("total_samples") or 0)
    limiter = gen.get(LIMITER_KEY)
    if isinstance(limiter, dict) and "live_trials" in limiter:
        running = {str(t["trial_id"]) for t in trials if t.get("status") not in TERMINAL_STATUSES}
        limiter["live_trials"] = set(limiter["live_trials"]) & running
        limiter["num_unfinished_live_trials"] = len(limiter["live_trials"])
    _write(fs, gen_file, cloudpickle.dumps(gen))
    return [
        f"the search had counted {before} trial(s) but Ray's saved trial table lists "
        f"{len(trials)} (a state saved part-way): the search goes on from {len(trials)}"
    ]


def abandon_unlisted_trials(experiment_path: str) -> list[str]:
    """Tell the saved searcher to forget trials Ray's saved trial table does not list.

    A driver killed while Ray writes its state files (or, on a bucket, between two uploads)
    can leave a searcher saved after it asked for a trial that the table, saved before, does
    not hold: Ray will never run that trial, so Optuna would keep it RUNNING for good. It is
    told FAIL as abandoned (`PrunedOptunaSearch.abandon`).
    """
    table = _trial_table_and(experiment_path, SEARCHER_GLOB)
    if table is None:
        return []
    fs, trials, searcher_file, data = table
    listed = {str(t.get("trial_id")) for t in trials}
    saved = pickle.loads(data)
    gone = sorted(set(saved.get("_ot_trials") or {}) - listed)
    if not gone:
        return []
    from search.optuna_pruned import PrunedOptunaSearch

    searcher = PrunedOptunaSearch.__new__(PrunedOptunaSearch)  # state only, as Ray restores
    searcher.__dict__.update(saved)
    try:
        searcher.abandon(gone)
    except OSError as err:  # the study's journal is not on this machine
        return [f"trial(s) {', '.join(gone)} left RUNNING in the Optuna study: {err}"]
    _write(fs, searcher_file, pickle.dumps(searcher.__dict__.copy()))
    return [
        f"trial(s) {', '.join(gone)} were asked for after Ray's last saved trial table and will "
        f"not run: told to Optuna as abandoned (FAIL)"
    ]


def _trial_table_and(experiment_path: str, glob: str):
    """(fs, the trials of the newest saved trial table, the newest file matching `glob`, its
    bytes), local or URI storage; None when either file is missing."""
    saved = saved_state(experiment_path)
    if saved is None:
        return None
    fs, state_file, state = saved
    other = _newest(fs, state_file.rsplit("/", 1)[0], glob.split("*")[0])
    if not other:
        return None
    with fs.open_input_stream(other) as stream:
        return fs, ray_state_trials(state), other, stream.read()


def saved_state(experiment_path: str) -> tuple[pyarrow.fs.FileSystem, str, dict] | None:
    """(fs, path, content) of the newest trial table Ray saved, local or URI storage; None when
    there is none. The one reader of that file here: a torn one is refused naming it
    (`trainables.experiment.parse_ray_state`)."""
    fs, root = pyarrow.fs.FileSystem.from_uri(_as_uri(experiment_path))
    selector = pyarrow.fs.FileSelector(root, allow_not_found=True)
    newest = newest_ray_state(i.path for i in fs.get_file_info(selector))
    if newest is None:
        return None
    with fs.open_input_stream(newest) as stream:
        where = newest if "://" not in experiment_path else f"{experiment_path}/{Path(newest).name}"
        return fs, newest, parse_ray_state(stream.read(), where)


def _newest(fs: pyarrow.fs.FileSystem, root: str, prefix: str) -> str | None:
    """The newest file of `root` named PREFIX<sortable time>... (Ray's saved state files)."""
    selector = pyarrow.fs.FileSelector(root, allow_not_found=True)
    names = [i.path for i in fs.get_file_info(selector) if i.base_name.startswith(prefix)]
    names = [n for n in names if not n.endswith(".tmp")]
    return max(names) if names else None


def _write(fs: pyarrow.fs.FileSystem, path: str, data: bytes) -> None:
    """Local: write beside and rename. Object stores replace an object whole on upload."""
    if fs.type_name == "local":
        atomic_write_bytes(Path(path), data)
        return
    with fs.open_output_stream(path) as out:
        out.write(data)


def repair_missing_checkpoints(experiment_path: str) -> list[str]:
    """Repair the newest experiment state under `experiment_path` (a local path or a URI).

    Returns one line per trial that was repointed, for the driver to print.
    """
    saved = saved_state(experiment_path)
    if saved is None:
        return []
    fs, newest, state = saved
    root = newest.rsplit("/", 1)[0]
    notes = []
    for entry in state.get("trial_data", []):
        note = _repair_trial(entry, root)
        if note:
            notes.append(note)
    if notes:
        _write(fs, newest, json.dumps(state).encode())
    return notes


def _repair_trial(entry: list[str], root: str) -> str | None:
    trial = json.loads(entry[0])
    meta = json.loads(entry[1])
    blob = meta.get("checkpoint_manager")
    if not isinstance(blob, dict) or blob.get("_type") != PICKLED:
        return None
    manager = cloudpickle.loads(bytes.fromhex(blob["value"]))
    latest = manager._latest_checkpoint_result
    old_root = _recorded_experiment_path(trial)

    def exists(result: Any) -> bool:
        return _exists(result, old_root, root)

    if latest is None or exists(latest):
        return None
    kept = [r for r in manager._checkpoint_results if exists(r)]
    replacement = max(kept, key=_iteration, default=None)
    manager._checkpoint_results = kept
    manager._latest_checkpoint_result = replacement
    meta["checkpoint_manager"] = {
        "_type": PICKLED,
        "value": cloudpickle.dumps(manager).hex(),
    }
    entry[1] = json.dumps(meta)
    name = trial.get("trial_id", "?")
    gone = latest.checkpoint.path.rsplit("/", 1)[-1]
    if replacement is None:
        return f"trial {name}: its latest checkpoint {gone} is gone; it restarts from epoch 1"
    found = replacement.checkpoint.path.rsplit("/", 1)[-1]
    return f"trial {name}: its latest checkpoint {gone} is gone; it resumes from {found}"


def _exists(result: Any, old_root: str | None = None, root: str | None = None) -> bool:
    """Whether a saved checkpoint is still there, looked for where the experiment is now (a
    moved experiment's state names its old place; Ray re-points the paths on restore)."""
    checkpoint = result.checkpoint
    path = checkpoint.path
    if old_root and root and path.startswith(old_root.rstrip("/") + "/"):
        path = root.rstrip("/") + path[len(old_root.rstrip("/")) :]
    return checkpoint.filesystem.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def _recorded_experiment_path(trial: dict[str, Any]) -> str | None:
    """The experiment path a saved trial's storage names (its place when Ray saved it)."""
    blob = trial.get("storage")
    if not isinstance(blob, dict) or blob.get("_type") != PICKLED:
        return None
    try:
        return cloudpickle.loads(bytes.fromhex(blob["value"])).experiment_fs_path
    except Exception:  # a state this Ray cannot read: look where the paths say
        return None


def _iteration(result: Any) -> int:
    return int(result.metrics.get("training_iteration", 0))


def _as_uri(path: str) -> str:
    return path if "://" in path else "file://" + path
