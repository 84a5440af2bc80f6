"""Read a sweep from disk: trials, configs, per-epoch histories, checkpoints, statuses.

The files and the rules for reading them (damaged result lines, repeated epochs, the best
checkpoint and its tie rule) belong to `trainables.experiment`; this module turns them into
pandas tables and report-ready statuses.

Only files are read (json, pandas), never a live Ray session, so a report can be rebuilt long
after the sweep. A partly finished sweep loads with what is missing listed in
`Experiment.missing`; only a directory without any trial is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from trainables import experiment as files
from trainables.config import TrialConfig, field_names
from trainables.experiment import (
    ERRORED,
    UNFINISHED,
    ExperimentRecord,
    ScoredCheckpoint,
    trial_outcome,
)


@dataclass
class TrialRecord:
    trial_id: str
    path: Path
    params: dict[str, Any]
    """The trial's config as Ray stored it (params.json)."""
    config: TrialConfig | None
    """`params` as a `TrialConfig`; None when params.json is missing or not a valid config."""
    history: pd.DataFrame
    """One row per epoch (column `epoch`, 1-based), last report of an epoch kept on resumes."""
    status: str
    epochs: int
    """Epochs trained (the last reported epoch)."""
    checkpoints: dict[int, Path] = field(default_factory=dict)
    """Epoch -> checkpoint directory (holding checkpoint.pt), for those still on disk."""
    best: ScoredCheckpoint | None = None
    """The best checkpoint of this trial by `trainables.experiment.rank_key`."""
    error: str | None = None
    """The last line of error.txt for errored trials."""
    seconds: float = 0.0
    """Training wall time, seconds (Ray's time_total_s at the last report)."""
    damaged_rows: int = 0
    """result.json lines skipped as damaged."""

    @property
    def best_epoch(self) -> int | None:
        """The epoch with the best metric among those with a checkpoint."""
        return None if self.best is None else self.best.epoch

    @property
    def best_score(self) -> float | None:
        return None if self.best is None else self.best.value

    @property
    def best_checkpoint(self) -> Path | None:
        return None if self.best is None else self.best.checkpoint_dir

    @property
    def group(self) -> dict[str, Any]:
        return {"model": self.params.get("model"), "balance": self.params.get("balance")}


@dataclass
class Experiment:
    path: Path
    name: str
    metric: str
    mode: str
    max_epochs: int | None
    record: ExperimentRecord | None
    """The experiment record the sweep wrote (None when missing)."""
    trials: list[TrialRecord]
    missing: list[str]
    """What a report on this experiment cannot cover, in words (one item per problem)."""
    sweep_summary: dict[str, dict[str, Any]] = field(default_factory=dict)
    """trial id -> its row in summary.json (written by search.run when a sweep ends)."""

    def usable(self) -> list[TrialRecord]:
        """Trials with a scored checkpoint on disk (errored ones included if they have one)."""
        return [t for t in self.trials if t.best is not None]

    def ranked(self, trials: list[TrialRecord] | None = None) -> list[TrialRecord]:
        """Usable trials, best first by their best checkpoint (`rank_key`: value, then the
        earlier epoch, then the trial id), the order `search.export` picks from."""
        pool = self.usable() if trials is None else [t for t in trials if t.best is not None]
        return sorted(pool, key=lambda t: files.rank_key(t.best, self.mode))

    def best_trial(self, trials: list[TrialRecord] | None = None) -> TrialRecord | None:
        ranked = self.ranked(trials)
        return ranked[0] if ranked else None

    def summary(self) -> pd.DataFrame:
        """One row per trial: id, status, epochs, best epoch and score, hours, params."""
        rows = []
        for t in self.trials:
            row = {
                "trial_id": t.trial_id,
                "status": t.status,
                "epochs": t.epochs,
                "best_epoch": t.best_epoch,
                self.metric: t.best_score,
                "hours": t.seconds / 3600,
            }
            # The trial's own `epochs` parameter is its budget; the row's `epochs` is what it ran.
            row.update(
                {k: v for k, v in t.params.items() if k not in row and not isinstance(v, dict)}
            )
            rows.append(row)
        return pd.DataFrame(rows)


def load_experiment(path: str | Path) -> Experiment:
    """Load `STORAGE/NAME/`; ValueError when it is missing or holds no trial directory."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise ValueError(f"experiment directory {path} does not exist")
    record = files.read_record(path)
    missing = []
    if record is None:
        missing.append(
            f"{files.EXPERIMENT_FILE} is missing: metric and mode assumed "
            f"{files.DEFAULT_METRIC}/{files.DEFAULT_MODE}"
        )
    metric = record.metric if record else files.DEFAULT_METRIC
    mode = record.mode if record else files.DEFAULT_MODE
    max_epochs = record.max_epochs if record else None

    trial_dirs = files.trial_dirs(path)
    if not trial_dirs:
        raise ValueError(_no_trials_message(path))
    try:
        ray_status = {s.dir_name: s.status for s in files.read_ray_states(path) if s.dir_name}
    except ValueError as err:  # a torn Ray state stops a resume, not a report from the files
        ray_status = {}
        missing.append(f"{err}; trial statuses are read from the trial folders alone")
    trials = [_load_trial(d, metric, mode, max_epochs, ray_status) for d in trial_dirs]
    missing += _problems(trials, record, metric, ray_status)
    summary = files.read_summary_rows(path)
    return Experiment(path, path.name, metric, mode, max_epochs, record, trials, missing, summary)


def _no_trials_message(path: Path) -> str:
    nested = sorted(d.name for d in path.iterdir() if d.is_dir() and files.holds_experiment(d))
    hint = f"; it holds experiments {nested}, pass one of them" if nested else ""
    return (
        f"experiment directory {path} holds no trials (no sub-directory with params.json or "
        f"result.json){hint}"
    )


def _history(epochs: dict[int, dict[str, Any]]) -> pd.DataFrame:
    """One row per epoch (the last report of each), Ray's nested `config` column left out."""
    if not epochs:
        return pd.DataFrame(columns=["epoch"])
    rows = [
        {**{k: v for k, v in r.items() if k != "config"}, "epoch": e} for e, r in epochs.items()
    ]
    frame = pd.DataFrame(rows)
    frame["epoch"] = frame["epoch"].astype(int)
    return frame.reset_index(drop=True)


def _config(params: dict[str, Any]) -> TrialConfig | None:
    known = set(field_names())
    try:
        return TrialConfig.from_dict({k: v for k, v in params.items() if k in known})
    except ValueError:
        return None


def _load_trial(
    d: Path, metric: str, mode: str, max_epochs: int | None, ray_status: dict[str, str]
) -> TrialRecord:
    params = files.read_params(d)
    results = files.read_results(d)
    epochs_rows = files.epoch_rows(results.rows)
    history = _history(epochs_rows)
    trial_id = files.trial_id_of(d, results.rows)
    config = _config(params)
    epochs = int(history["epoch"].max()) if len(history) else 0
    seconds = float(history["time_total_s"].iloc[-1]) if "time_total_s" in history else 0.0
    record = TrialRecord(trial_id, d, params, config, history, UNFINISHED, epochs, seconds=seconds)
    record.damaged_rows = results.damaged
    record.checkpoints = files.find_checkpoints(d, epochs_rows)
    scored = files.scored_checkpoints(d, trial_id, epochs_rows, record.checkpoints, metric)
    record.best = files.best_of(scored, mode)
    record.error = files.read_error(d)
    target = max_epochs or (config.epochs if config else None)
    # Without Ray's saved state a trial short of its epochs counts as stopped (or is still
    # running, which the files cannot tell apart).
    record.status = trial_outcome(ray_status.get(d.name), epochs, target, record.error is not None)
    return record


def _problems(
    trials: list[TrialRecord],
    record: ExperimentRecord | None,
    metric: str,
    ray_status: dict[str, str],
) -> list[str]:
    out = []
    for t in trials:
        if t.status == ERRORED:
            out.append(f"trial {t.trial_id} errored after {t.epochs} epochs: {t.error}")
        elif t.status == UNFINISHED:
            out.append(f"trial {t.trial_id} is unfinished ({t.epochs} epochs reported)")
        if t.config is None:
            out.append(f"trial {t.trial_id}: params.json is missing or not a valid TrialConfig")
        if t.damaged_rows:
            out.append(f"trial {t.trial_id}: {t.damaged_rows} damaged result.json line(s) skipped")
        if len(t.history) and metric not in t.history:
            out.append(f"trial {t.trial_id} never reported the metric {metric!r}")
        elif not t.checkpoints and t.epochs:
            out.append(f"trial {t.trial_id} has no checkpoint on disk; it cannot be evaluated")
    expected = record.num_samples if record else None
    if isinstance(expected, int) and expected > len(trials):
        out.append(
            f"{expected - len(trials)} of {expected} planned trials have no directory (not started)"
        )
    not_started = [name for name, s in ray_status.items() if s == "PENDING"]
    if not_started and not isinstance(expected, int):
        out.append(f"{len(not_started)} trials were still pending in Ray's state file")
    return out
