"""The best checkpoint (`rank_key`): the better metric value, then the earlier epoch, then the
smaller trial id; NaN never wins. `search.export`, `analysis.load` and a trial's best epoch
(`best_epoch_row`) all rank with it. Reads trials' files through `trainables.experiment.trials`."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainables.experiment.rules import check_mode
from trainables.experiment.trials import (
    epoch_rows,
    find_checkpoints,
    read_results,
    trial_dirs,
    trial_id_of,
)


@dataclass(frozen=True)
class ScoredCheckpoint:
    trial_dir: Path
    trial_id: str
    epoch: int
    checkpoint_dir: Path
    value: float
    """The metric at `epoch` (the row of the epoch that wrote the checkpoint)."""
    row: dict[str, Any]


def rank_key(candidate: ScoredCheckpoint, mode: str) -> tuple[float, int, str]:
    """Sort key, best first: the better value, then the earlier epoch, then the smaller trial id."""
    check_mode(mode)
    value = -candidate.value if mode == "max" else candidate.value
    return (value, candidate.epoch, candidate.trial_id)


def best_epoch_row(
    rows: Iterable[Mapping[str, Any]], metric: str, mode: str
) -> tuple[int, dict[str, Any]] | None:
    """A trial's best epoch and its row by `rank_key`'s rule (the better value, then the earlier
    epoch; NaN never wins); None when no epoch reported `metric` as a number."""
    check_mode(mode)
    scored = []
    for epoch, row in epoch_rows(rows).items():
        value = row.get(metric)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isnan(float(value)):
                scored.append(((-float(value) if mode == "max" else float(value)), epoch, row))
    if not scored:
        return None
    _, epoch, row = min(scored, key=lambda s: (s[0], s[1]))
    return epoch, row


def scored_checkpoints(
    trial_dir: Path,
    trial_id: str,
    epochs: Mapping[int, Mapping[str, Any]],
    checkpoints: Mapping[int, Path],
    metric: str,
) -> list[ScoredCheckpoint]:
    """The trial's checkpoints on disk whose epoch reported `metric` as a number (not NaN)."""
    out = []
    for epoch, ckpt in checkpoints.items():
        value = epochs.get(epoch, {}).get(metric)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isnan(float(value)):
                row = dict(epochs[epoch])
                out.append(ScoredCheckpoint(trial_dir, trial_id, epoch, ckpt, float(value), row))
    return out


def best_of(candidates: Iterable[ScoredCheckpoint], mode: str) -> ScoredCheckpoint | None:
    ranked = sorted(candidates, key=lambda c: rank_key(c, mode))
    return ranked[0] if ranked else None


def trial_checkpoints(trial_dir: Path, metric: str) -> list[ScoredCheckpoint]:
    """Every scored checkpoint of one trial, straight from its files."""
    rows = read_results(trial_dir).rows
    epochs = epoch_rows(rows)
    checkpoints = find_checkpoints(trial_dir, epochs)
    return scored_checkpoints(trial_dir, trial_id_of(trial_dir, rows), epochs, checkpoints, metric)


def best_checkpoint(experiment_dir: Path, metric: str, mode: str) -> ScoredCheckpoint:
    """The best checkpoint of the experiment by `rank_key`; ValueError when there is none."""
    check_mode(mode)
    experiment_dir = Path(experiment_dir)
    trials = trial_dirs(experiment_dir)
    if not trials:
        raise ValueError(
            f"{experiment_dir} holds no trial directories (params.json or result.json)"
        )
    best = best_of((c for d in trials for c in trial_checkpoints(d, metric)), mode)
    if best is None:
        raise ValueError(f"{experiment_dir}: no trial has a kept checkpoint with {metric!r}")
    return best


def ranked_trials(experiment_dir: Path, metric: str, mode: str) -> list[ScoredCheckpoint]:
    """Each trial's best checkpoint, the trials best first by `rank_key` (what export and the
    report call the ranking of the configurations)."""
    check_mode(mode)
    bests = [best_of(trial_checkpoints(d, metric), mode) for d in trial_dirs(experiment_dir)]
    return sorted((b for b in bests if b is not None), key=lambda c: rank_key(c, mode))
