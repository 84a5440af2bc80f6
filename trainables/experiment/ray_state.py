"""Ray's saved experiment state, `NAME/experiment_state-*.json` (Ray's trial table: read, never
written here), and the one rule for how a trial ended (`trial_outcome`)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RAY_STATE_PREFIX = "experiment_state-"  # + a sortable time + .json, one per save
RAY_STATE_GLOB = f"{RAY_STATE_PREFIX}*.json"

TERMINAL_STATUSES = ("TERMINATED", "ERROR")  # Ray's statuses of a trial that will not run again

# How a trial ended, in words a report can print (`trial_outcome` decides).
COMPLETED = "completed"  # trained all max_epochs
STOPPED = "stopped early"  # ended before max_epochs without error (ASHA or a time budget)
ERRORED = "errored"  # raised (Ray's ERROR; error.txt in the trial dir)
UNFINISHED = "unfinished"  # still pending or running, or nothing reported yet


def trial_outcome(
    status: str | None, epochs: int, max_epochs: int | None, raised: bool = False
) -> str:
    """COMPLETED, STOPPED, ERRORED or UNFINISHED: the one rule for how a trial ended, used by
    summary.json, the W&B tags, the Optuna state, the progress lines and the report.

    `status` is Ray's word (None when unknown: no saved Ray state, or a callback that only
    knows whether the trial raised); `raised` decides ERRORED only without a status, since a
    trial Ray retried after an error has an error.txt but may since have finished. `epochs` is
    the last epoch it reported; `max_epochs` None when unknown."""
    if status == "ERROR" or (status is None and raised):
        return ERRORED
    if status in ("PENDING", "RUNNING", "PAUSED"):
        return UNFINISHED
    if max_epochs is not None and epochs >= max_epochs:
        return COMPLETED
    if status == "TERMINATED" or epochs > 0:
        return STOPPED
    return UNFINISHED


@dataclass(frozen=True)
class RayTrialState:
    trial_id: str
    dir_name: str
    """The trial directory's name under the experiment ('' when Ray did not record it)."""
    status: str
    """Ray's word: PENDING, RUNNING, PAUSED, TERMINATED or ERROR."""


def newest_ray_state(names: Iterable[str]) -> str | None:
    """The newest of Ray's saved experiment states among `names` (paths or file names): Ray
    names them experiment_state-<sortable time>.json, one per driver session."""
    states = [n for n in names if _base(n).startswith(RAY_STATE_PREFIX) and n.endswith(".json")]
    return max(states, key=_base) if states else None


def _base(name: str) -> str:
    return name.rstrip("/").rsplit("/", 1)[-1]


def parse_ray_state(data: bytes | str, where: str) -> dict[str, Any]:
    """Ray's saved experiment state, each trial's JSON checked; a one-line ValueError naming
    `where` and what to do when it is torn (a write cut short by a full disk or a crash) or is
    not Ray's. The one rule for every reader of this file (`read_ray_states`, `search.repair`).
    """
    try:
        state = json.loads(data)
        for trial, meta in state["trial_data"]:
            json.loads(trial)["trial_id"]
            json.loads(meta)
    except (ValueError, KeyError, TypeError) as err:  # JSONDecodeError is a ValueError
        reason = f"{type(err).__name__}: {err}"
        raise ValueError(
            f"{where}: Ray's saved experiment state cannot be read ({reason}), as a write cut "
            f"short by a full disk or a crash leaves it; Ray cannot resume from it: move it "
            f"aside to resume from an older {RAY_STATE_GLOB} beside it, or start a new --name"
        ) from None
    return state


def ray_state_trials(state: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The plain JSON part of each trial in a `parse_ray_state` state (Ray's pickles left alone)."""
    return [json.loads(trial) for trial, _ in state["trial_data"]]


def read_ray_states(experiment_dir: Path) -> list[RayTrialState]:
    """The trials of the newest experiment_state-*.json Ray saved (what a resume sees); [] when
    Ray saved none. A torn one is refused (`parse_ray_state`)."""
    newest = newest_ray_state(str(p) for p in Path(experiment_dir).glob(RAY_STATE_GLOB))
    if newest is None:
        return []
    out = []
    for trial in ray_state_trials(parse_ray_state(Path(newest).read_bytes(), newest)):
        if isinstance(trial.get("status"), str):
            name = Path(trial.get("relative_logdir") or "").name
            out.append(RayTrialState(str(trial.get("trial_id", "")), name, trial["status"]))
    return out
