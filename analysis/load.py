"""Read a sweep from disk: trials, configs, per-epoch histories, checkpoints, statuses.

An experiment is Ray Tune's layout under `STORAGE/NAME/` plus the sweep's own `cxr_tune.json`:

    NAME/cxr_tune.json                  space file, metric, mode, max epochs, CLI arguments
    NAME/experiment_state-*.json        Ray's trial table (status per trial), optional here
    NAME/<trial dir>/params.json        the trial's config (a `TrialConfig` dict)
    NAME/<trial dir>/result.json        one JSON object per reported epoch
    NAME/<trial dir>/checkpoint_NNNNNN/checkpoint.pt
    NAME/<trial dir>/error.txt          only for a trial that raised

Only files are read (json, pandas), never a live Ray session, so a report can be rebuilt long
after the sweep. A partly finished sweep loads with what is missing listed in
`Experiment.missing`; only a directory without any trial is refused.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from trainables.config import TrialConfig, field_names

META_FILE = "cxr_tune.json"
SUMMARY_FILE = "summary.json"  # written by search.run at the end of a sweep
MODES = ("max", "min")
DEFAULT_METRIC, DEFAULT_MODE = "val_acc", "max"  # when cxr_tune.json is missing

# Trial statuses, in words a report can print.
COMPLETED = "completed"  # trained all max_epochs
STOPPED = "stopped early"  # ended before max_epochs without error (ASHA)
ERRORED = "errored"  # raised; error.txt in the trial dir
UNFINISHED = "unfinished"  # still pending or running when the files were written

# Ray's own columns in result.json that are not metrics.
_RAY_COLUMNS = {
    "config",
    "date",
    "hostname",
    "node_ip",
    "pid",
    "timestamp",
    "done",
    "trial_id",
    "experiment_tag",
    "time_since_restore",
    "iterations_since_restore",
    "should_checkpoint",
}


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
    best_epoch: int | None = None
    """The epoch with the best metric among those with a checkpoint."""
    best_score: float | None = None
    error: str | None = None
    """The last line of error.txt for errored trials."""
    seconds: float = 0.0
    """Training wall time, seconds (Ray's time_total_s at the last report)."""

    @property
    def best_checkpoint(self) -> Path | None:
        return None if self.best_epoch is None else self.checkpoints[self.best_epoch]

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
    meta: dict[str, Any]
    """cxr_tune.json as written by the sweep ({} when missing)."""
    trials: list[TrialRecord]
    missing: list[str]
    """What a report on this experiment cannot cover, in words (one item per problem)."""
    sweep_summary: dict[str, dict[str, Any]] = field(default_factory=dict)
    """trial id -> its row in summary.json (written by search.run when a sweep ends)."""

    def usable(self) -> list[TrialRecord]:
        """Trials with a scored checkpoint on disk (errored ones included if they have one)."""
        return [t for t in self.trials if t.best_checkpoint is not None]

    def ranked(self, trials: list[TrialRecord] | None = None) -> list[TrialRecord]:
        """Usable trials, best first by their best checkpointed score."""
        pool = self.usable() if trials is None else [t for t in trials if t.best_checkpoint]
        sign = -1.0 if self.mode == "max" else 1.0
        return sorted(pool, key=lambda t: (sign * t.best_score, t.trial_id))

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
    meta, missing = _read_meta(path)
    metric = str(meta.get("metric", DEFAULT_METRIC))
    mode = str(meta.get("mode", DEFAULT_MODE))
    if mode not in MODES:
        raise ValueError(f"{path / META_FILE}: unknown mode {mode!r}; expected one of {MODES}")
    max_epochs = meta.get("max_epochs")
    max_epochs = int(max_epochs) if max_epochs is not None else None

    trial_dirs = sorted(d for d in path.iterdir() if d.is_dir() and _is_trial_dir(d))
    if not trial_dirs:
        raise ValueError(_no_trials_message(path))
    ray_status = _ray_statuses(path)
    trials = [_load_trial(d, metric, mode, max_epochs, ray_status) for d in trial_dirs]
    missing += _problems(trials, meta, metric, ray_status)
    return Experiment(
        path, path.name, metric, mode, max_epochs, meta, trials, missing, _summary_rows(path)
    )


def _summary_rows(path: Path) -> dict[str, dict[str, Any]]:
    """summary.json's per-trial rows by trial id; {} when absent or unreadable (optional)."""
    try:
        summary = json.loads((path / SUMMARY_FILE).read_text())
        return {str(r["trial_id"]): r for r in summary.get("trial_rows", []) if "trial_id" in r}
    except (OSError, json.JSONDecodeError, TypeError, AttributeError, KeyError):
        return {}


def _read_meta(path: Path) -> tuple[dict[str, Any], list[str]]:
    meta_path = path / META_FILE
    if not meta_path.is_file():
        return {}, [
            f"{META_FILE} is missing: metric and mode assumed {DEFAULT_METRIC}/{DEFAULT_MODE}"
        ]
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{meta_path} is not valid JSON: {err}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_path} must hold a JSON object")
    return meta, []


def _is_trial_dir(d: Path) -> bool:
    return (d / "params.json").is_file() or (d / "result.json").is_file()


def _no_trials_message(path: Path) -> str:
    nested = sorted(d.name for d in path.iterdir() if d.is_dir() and (d / META_FILE).is_file())
    hint = f"; it holds experiments {nested}, pass one of them" if nested else ""
    return (
        f"experiment directory {path} holds no trials (no sub-directory with params.json or "
        f"result.json){hint}"
    )


def _ray_statuses(path: Path) -> dict[str, str]:
    """trial dir name -> Ray status (TERMINATED, ERROR, ...) from the newest experiment_state
    file. Only plain JSON fields are read; Ray's pickled fields are left alone."""
    states = sorted(path.glob("experiment_state-*.json"))
    if not states:
        return {}
    try:
        state = json.loads(states[-1].read_text())
        out = {}
        for entry in state.get("trial_data", []):
            trial = json.loads(entry[0]) if isinstance(entry, list) else {}
            name = trial.get("relative_logdir") or ""
            if name and isinstance(trial.get("status"), str):
                out[Path(name).name] = trial["status"]
        return out
    except (json.JSONDecodeError, TypeError, AttributeError, IndexError):
        return {}  # a half-written or foreign state file: statuses come from the trial files


def _read_results(d: Path) -> pd.DataFrame:
    rows = []
    result_file = d / "result.json"
    if result_file.is_file():
        for line in result_file.read_text().splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut off by a crash mid-write: keep what came before
    if not rows:
        return pd.DataFrame(columns=["epoch"])
    frame = pd.DataFrame([{k: v for k, v in r.items() if k != "config"} for r in rows])
    if "epoch" not in frame:
        frame["epoch"] = frame.get("training_iteration", pd.Series(range(1, len(frame) + 1)))
    frame["epoch"] = frame["epoch"].astype(int)
    # A restored trial reports its epochs again; the last report of an epoch is the one that
    # the checkpoints and later epochs follow from.
    return frame.drop_duplicates("epoch", keep="last").sort_values("epoch").reset_index(drop=True)


def _checkpoints(d: Path, history: pd.DataFrame) -> dict[int, Path]:
    on_disk = {c.name: c for c in d.glob("checkpoint_*") if (c / "checkpoint.pt").is_file()}
    found: dict[int, Path] = {}
    if "checkpoint_dir_name" in history:
        for epoch, name in zip(history["epoch"], history["checkpoint_dir_name"], strict=True):
            if isinstance(name, str) and name in on_disk:
                found[int(epoch)] = on_disk[name]
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
        state = torch.load(ckpt / "checkpoint.pt", map_location="cpu", weights_only=True, mmap=True)
        return int(state["epoch"])
    except Exception:  # an unreadable checkpoint is reported as missing, not fatal
        return None


def _config(params: dict[str, Any]) -> TrialConfig | None:
    known = set(field_names())
    try:
        return TrialConfig.from_dict({k: v for k, v in params.items() if k in known})
    except ValueError:
        return None


def _load_trial(
    d: Path, metric: str, mode: str, max_epochs: int | None, ray_status: dict[str, str]
) -> TrialRecord:
    params: dict[str, Any] = {}
    if (d / "params.json").is_file():
        try:
            loaded = json.loads((d / "params.json").read_text())
            params = loaded if isinstance(loaded, dict) else {}
        except json.JSONDecodeError:
            params = {}
    history = _read_results(d)
    trial_id = _trial_id(d, history)
    config = _config(params)
    epochs = int(history["epoch"].max()) if len(history) else 0
    seconds = float(history["time_total_s"].iloc[-1]) if "time_total_s" in history else 0.0
    record = TrialRecord(trial_id, d, params, config, history, UNFINISHED, epochs, seconds=seconds)
    record.checkpoints = _checkpoints(d, history)
    record.error = _error(d)
    target = max_epochs or (config.epochs if config else None)
    record.status = _status(ray_status.get(d.name), record.error, epochs, target)
    _score(record, metric, mode)
    return record


def _trial_id(d: Path, history: pd.DataFrame) -> str:
    if "trial_id" in history and len(history):
        return str(history["trial_id"].iloc[-1])
    # search.run names trial dirs 'trial_<trial_id>'; Ray's default is
    # '<trainable>_<trial_id>_<index>_<params>_<date>'.
    parts = d.name.split("_")
    return parts[1] if len(parts) >= 2 else d.name


def _error(d: Path) -> str | None:
    if (d / "error.txt").is_file():
        lines = [ln for ln in (d / "error.txt").read_text(errors="replace").splitlines() if ln]
        return lines[-1].strip() if lines else "error (empty error.txt)"
    if (d / "error.pkl").is_file():
        return "error (details only in error.pkl)"
    return None


def _status(ray: str | None, error: str | None, epochs: int, target: int | None) -> str:
    if ray == "ERROR" or (ray is None and error is not None):
        return ERRORED
    if ray in ("PENDING", "RUNNING", "PAUSED"):
        return UNFINISHED
    if target is not None and epochs >= target:
        return COMPLETED
    if ray == "TERMINATED":
        return STOPPED
    # No Ray state file: a trial short of its epochs was stopped (or is still running, which
    # the files cannot tell apart).
    return STOPPED if epochs > 0 else UNFINISHED


def _score(record: TrialRecord, metric: str, mode: str) -> None:
    h = record.history
    if metric not in h or not record.checkpoints:
        return
    scores = {
        int(e): float(s)
        for e, s in zip(h["epoch"], h[metric], strict=True)
        if int(e) in record.checkpoints and s is not None and not math.isnan(float(s))
    }
    if not scores:
        return
    # Ties go to the earlier epoch (fewer epochs, same score).
    if mode == "max":
        best = max(scores, key=lambda e: (scores[e], -e))
    else:
        best = min(scores, key=lambda e: (scores[e], e))
    record.best_epoch, record.best_score = best, scores[best]


def _problems(
    trials: list[TrialRecord], meta: dict[str, Any], metric: str, ray_status: dict[str, str]
) -> list[str]:
    out = []
    for t in trials:
        if t.status == ERRORED:
            out.append(f"trial {t.trial_id} errored after {t.epochs} epochs: {t.error}")
        elif t.status == UNFINISHED:
            out.append(f"trial {t.trial_id} is unfinished ({t.epochs} epochs reported)")
        if t.config is None:
            out.append(f"trial {t.trial_id}: params.json is missing or not a valid TrialConfig")
        if len(t.history) and metric not in t.history:
            out.append(f"trial {t.trial_id} never reported the metric {metric!r}")
        elif not t.checkpoints and t.epochs:
            out.append(f"trial {t.trial_id} has no checkpoint on disk; it cannot be evaluated")
    expected = meta.get("num_samples")
    if isinstance(expected, int) and expected > len(trials):
        out.append(
            f"{expected - len(trials)} of {expected} planned trials have no directory (not started)"
        )
    not_started = [name for name, s in ray_status.items() if s == "PENDING"]
    if not_started and not isinstance(expected, int):
        out.append(f"{len(not_started)} trials were still pending in Ray's state file")
    return out
