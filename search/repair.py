"""Make a killed sweep's saved state safe to resume.

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
from typing import Any

import pyarrow.fs
from ray import cloudpickle
from ray._common.utils import binary_to_hex, hex_to_binary
from ray.train._internal.storage import _exists_at_fs_path

from trainables.experiment import RAY_STATE_PREFIX

PICKLED = "CLOUDPICKLE_FALLBACK"


def repair_missing_checkpoints(experiment_path: str) -> list[str]:
    """Repair the newest experiment state under `experiment_path` (a local path or a URI).

    Returns one line per trial that was repointed, for the driver to print.
    """
    fs, root = pyarrow.fs.FileSystem.from_uri(_as_uri(experiment_path))
    states = [
        info.path
        for info in fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
        if info.base_name.startswith(RAY_STATE_PREFIX) and info.base_name.endswith(".json")
    ]
    if not states:
        return []
    newest = max(states)  # names carry a sortable timestamp
    with fs.open_input_stream(newest) as stream:
        state = json.loads(stream.read().decode())
    notes = []
    for entry in state.get("trial_data", []):
        note = _repair_trial(entry)
        if note:
            notes.append(note)
    if notes:
        # Local: write beside and rename. Object stores replace an object whole on upload.
        target = newest + ".tmp" if fs.type_name == "local" else newest
        with fs.open_output_stream(target) as out:
            out.write(json.dumps(state).encode())
        if target != newest:
            fs.move(target, newest)
    return notes


def _repair_trial(entry: list[str]) -> str | None:
    trial = json.loads(entry[0])
    meta = json.loads(entry[1])
    blob = meta.get("checkpoint_manager")
    if not isinstance(blob, dict) or blob.get("_type") != PICKLED:
        return None
    manager = cloudpickle.loads(hex_to_binary(blob["value"]))
    latest = manager._latest_checkpoint_result
    if latest is None or _exists(latest):
        return None
    kept = [r for r in manager._checkpoint_results if _exists(r)]
    replacement = max(kept, key=_iteration, default=None)
    manager._checkpoint_results = kept
    manager._latest_checkpoint_result = replacement
    meta["checkpoint_manager"] = {
        "_type": PICKLED,
        "value": binary_to_hex(cloudpickle.dumps(manager)),
    }
    entry[1] = json.dumps(meta)
    name = trial.get("trial_id", "?")
    gone = latest.checkpoint.path.rsplit("/", 1)[-1]
    if replacement is None:
        return f"trial {name}: its latest checkpoint {gone} is gone; it restarts from epoch 1"
    found = replacement.checkpoint.path.rsplit("/", 1)[-1]
    return f"trial {name}: its latest checkpoint {gone} is gone; it resumes from {found}"


def _exists(result: Any) -> bool:
    checkpoint = result.checkpoint
    return _exists_at_fs_path(checkpoint.filesystem, checkpoint.path)


def _iteration(result: Any) -> int:
    return int(result.metrics.get("training_iteration", 0))


def _as_uri(path: str) -> str:
    return path if "://" in path else "file://" + path
