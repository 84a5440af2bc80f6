"""A trial's files: `result.json` (one JSON object per reported epoch; a damaged line is
skipped and counted, a repeated epoch's last report wins), `params.json`, `error.txt` and its
`checkpoint_NNNNNN/checkpoint.pt` folders."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULT_FILE = "result.json"
PARAMS_FILE = "params.json"
ERROR_FILE = "error.txt"
ERROR_PICKLE = "error.pkl"
CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_GLOB = "checkpoint_*"
TRIAL_DIR_PREFIX = "trial_"  # search.run names trial directories trial_<trial id>


@dataclass(frozen=True)
class Results:
    """A trial's result.json: the rows that parsed, in file order, and how many did not."""

    rows: list[dict[str, Any]]
    damaged: int = 0
    """Lines skipped because they were not a JSON object."""


def is_trial_dir(directory: Path) -> bool:
    return (directory / PARAMS_FILE).is_file() or (directory / RESULT_FILE).is_file()


def trial_dirs(experiment_dir: Path) -> list[Path]:
    """Sub-directories holding params.json or result.json, sorted by name."""
    return sorted(d for d in Path(experiment_dir).iterdir() if d.is_dir() and is_trial_dir(d))


def read_results(trial_dir: Path) -> Results:
    """The rows of `trial_dir/result.json`; a damaged line is skipped and counted (module doc)."""
    path = Path(trial_dir) / RESULT_FILE
    if not path.is_file():
        return Results([])
    return parse_results(path.read_text(errors="replace"))


def parse_results(text: str) -> Results:
    """`read_results` of a result.json's text (one read from a bucket, say)."""
    rows, damaged = [], 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        else:
            damaged += 1
    return Results(rows, damaged)


def row_epoch(row: Mapping[str, Any], index: int) -> int:
    """The epoch of a result row: `epoch`, else Ray's `training_iteration`, else its position."""
    value = row.get("epoch", row.get("training_iteration"))
    return int(value) if value is not None else index + 1


def epoch_rows(rows: Iterable[Mapping[str, Any]]) -> dict[int, dict[str, Any]]:
    """Epoch -> the last row reported for it (a restored trial reports an epoch again), sorted."""
    out: dict[int, dict[str, Any]] = {}
    for i, row in enumerate(rows):
        out[row_epoch(row, i)] = dict(row)
    return dict(sorted(out.items()))


def read_params(trial_dir: Path) -> dict[str, Any]:
    """params.json as a dict; {} when missing or not a JSON object."""
    path = Path(trial_dir) / PARAMS_FILE
    try:
        loaded = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def read_error(trial_dir: Path) -> str | None:
    """The last line of error.txt for a trial that raised; None for one that did not."""
    text_file, pickle_file = Path(trial_dir) / ERROR_FILE, Path(trial_dir) / ERROR_PICKLE
    if text_file.is_file():
        lines = [ln for ln in text_file.read_text(errors="replace").splitlines() if ln]
        return lines[-1].strip() if lines else "error (empty error.txt)"
    if pickle_file.is_file():
        return "error (details only in error.pkl)"
    return None


def trial_id_of(trial_dir: Path, rows: list[dict[str, Any]]) -> str:
    """The trial id from its last result row, else from the directory name."""
    for row in reversed(rows):
        if row.get("trial_id"):
            return str(row["trial_id"])
    # search.run names trial dirs 'trial_<trial_id>'; Ray's default is
    # '<trainable>_<trial_id>_<index>_<params>_<date>'.
    parts = Path(trial_dir).name.split("_")
    return parts[1] if len(parts) >= 2 else Path(trial_dir).name


def find_checkpoints(trial_dir: Path, epochs: Mapping[int, Mapping[str, Any]]) -> dict[int, Path]:
    """Epoch -> checkpoint directory holding checkpoint.pt, for those still on disk.

    A row's `checkpoint_dir_name` says which epoch wrote a checkpoint; a checkpoint no row names
    (its row was lost) gets the epoch stored inside checkpoint.pt.
    """
    trial_dir = Path(trial_dir)
    on_disk = {
        c.name: c for c in trial_dir.glob(CHECKPOINT_GLOB) if (c / CHECKPOINT_FILE).is_file()
    }
    found: dict[int, Path] = {}
    for epoch, row in epochs.items():
        name = row.get("checkpoint_dir_name")
        if isinstance(name, str) and name in on_disk:
            found[epoch] = on_disk[name]
    for ckpt in on_disk.values():
        if ckpt not in found.values():
            epoch = _checkpoint_epoch(ckpt)
            if epoch is not None:
                found.setdefault(epoch, ckpt)
    return dict(sorted(found.items()))


def _checkpoint_epoch(ckpt: Path) -> int | None:
    """The completed epoch stored in checkpoint.pt (memory-mapped: tensors are not read)."""
    import torch

    try:
        state = torch.load(ckpt / CHECKPOINT_FILE, map_location="cpu", weights_only=True, mmap=True)
        return int(state["epoch"])
    except Exception:  # an unreadable checkpoint counts as missing, not fatal
        return None
