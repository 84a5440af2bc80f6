"""Ray's record of a trial's checkpoints, inside its saved trial table.

Each trial's entry in `experiment_state-*.json` embeds Ray's checkpoint manager as a pickle:
the checkpoints it knows and the latest, which `Tuner.restore` resumes the trial from. Ray has
no public way to list or set them; the two repairs that must (`search.repair`) do it here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.fs

from search import saved_state as saved
from trainables.experiment import epoch_rows, find_checkpoints


def to_newest_checkpoint(
    trial: dict[str, Any], meta: dict[str, Any], trial_dir: Path, rows: list[dict[str, Any]]
) -> str | None:
    """Point an unfinished trial at its newest checkpoint on disk when Ray's saved table
    records an older one (it was written after the last save)."""
    from ray.train._internal.session import _TrainingResult
    from ray.tune import Checkpoint

    manager, old_root = saved.load_blob(meta.get("checkpoint_manager")), _recorded_root(trial)
    epochs = epoch_rows(rows)
    on_disk = find_checkpoints(trial_dir, epochs)
    if manager is None or not old_root or not on_disk:
        return None
    epoch = max(on_disk)
    latest = _latest(manager)
    if epoch not in epochs or (
        latest and _iteration(latest) >= int(epochs[epoch].get("training_iteration", epoch))
    ):
        return None
    # Ray re-points saved paths from the place it saved them to the current one on restore.
    path = f"{old_root.rstrip('/')}/{trial_dir.name}/{on_disk[epoch].name}"
    filesystem = latest.checkpoint.filesystem if latest else pyarrow.fs.LocalFileSystem()
    result = _TrainingResult(checkpoint=Checkpoint(path, filesystem), metrics=epochs[epoch])
    _set_checkpoints(manager, [*_results(manager), result], result)
    meta["checkpoint_manager"], meta["last_result"] = saved.dump_blob(manager), epochs[epoch]
    was = _iteration(latest) if latest else 0
    return (
        f"continues from {on_disk[epoch].name} (epoch {epoch}), written after Ray's last save "
        f"(which had iteration {was})"
    )


def drop_missing(entry: list[str], state_file: str) -> str | None:
    """Point a trial whose latest saved checkpoint is gone at its newest one that still exists
    (or none: it restarts from epoch 1); one line to print, or None when nothing was gone."""
    trial, meta = json.loads(entry[0]), json.loads(entry[1])
    if trial.get("status") == "TERMINATED":
        return None  # never resumed (an errored trial is: resume_errored)
    manager = saved.load_blob(meta.get("checkpoint_manager"))
    latest = _latest(manager) if manager is not None else None
    old_root, root = _recorded_root(trial), state_file.rsplit("/", 1)[0]
    if latest is None or _exists(latest, old_root, root):
        return None
    kept = [r for r in _results(manager) if _exists(r, old_root, root)]
    replacement = max(kept, key=_iteration, default=None)
    _set_checkpoints(manager, kept, replacement)
    meta["checkpoint_manager"] = saved.dump_blob(manager)
    entry[1] = json.dumps(meta)
    gone = latest.checkpoint.path.rsplit("/", 1)[-1]
    then = (
        f"resumes from {replacement.checkpoint.path.rsplit('/', 1)[-1]}"
        if replacement
        else "restarts from epoch 1"
    )
    return f"trial {trial.get('trial_id', '?')}: its latest checkpoint {gone} is gone; it {then}"


# Private (checked on Ray 2.60.0): Ray's checkpoint manager has no public way to list or set a
# restored trial's checkpoints. Read and written only by these two functions.
def _results(manager: Any) -> list[Any]:
    return list(manager._checkpoint_results)


def _latest(manager: Any) -> Any:
    return manager._latest_checkpoint_result


def _set_checkpoints(manager: Any, results: list[Any], latest: Any) -> None:
    manager._checkpoint_results, manager._latest_checkpoint_result = results, latest


def _exists(result: Any, old_root: str | None, root: str) -> bool:
    """Whether a saved checkpoint is still there, looked for where the experiment is now (a
    moved experiment's state names its old place; Ray re-points the paths on restore)."""
    path = result.checkpoint.path
    if old_root and path.startswith(old_root.rstrip("/") + "/"):
        path = root.rstrip("/") + path[len(old_root.rstrip("/")) :]
    return result.checkpoint.filesystem.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def _recorded_root(trial: dict[str, Any]) -> str | None:
    """The experiment path a saved trial's storage names (its place when Ray saved it)."""
    try:
        return saved.load_blob(trial.get("storage")).experiment_fs_path
    except Exception:  # a state this Ray cannot read: look where the paths say
        return None


def _iteration(result: Any) -> int:
    return int(result.metrics.get("training_iteration", 0))
