"""Noise-aware selection: the model a sweep exports is chosen by its mean over seeds, not by the
single luckiest epoch (Zech et al. 2019: at this data scale one seed's ranking can be noise).

The one rule, used by the export (`search.export`) and the report (`analysis.reruns`) alike:

- A multi-seed re-run (`search.rerun`, NAME/reruns/R/) trains the sweep's top configurations
  again with new seeds. Each re-run trial's score is its best kept checkpoint's metric (the
  statistic the sweep ranks its trials by, `trainables.experiment.rank_key`); `load_rerun`.
- Each configuration's mean and Student's t 95 % interval over its seeds (scipy.stats.t.interval,
  n - 1 degrees of freedom; no interval with one seed); `t_interval`.
- The selected configuration is the one with the best mean (ties: the sweep's better rank). Its
  exported checkpoint is the seed whose score is closest to that mean (a typical model, not the
  luckiest; ties: the smaller seed); `select`.
- The re-run used is the newest complete one (every planned configuration scored for every
  planned seed) that ranks by the export's metric and mode; `newest_complete_rerun`. Without
  one, the export is the sweep's single best epoch and says so (`SINGLE_RUN`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainables import experiment as files
from trainables.experiment import RerunPlan, ScoredCheckpoint

CONFIDENCE = 0.95  # the intervals' level (analysis.stats.ALPHA = 0.05 speaks of the same 95 %)
SINGLE_RUN = "single run (no re-run): best epoch of the sweep"


@dataclass(frozen=True)
class MeanInterval:
    """A mean over seeds with its t interval (NaN bounds with fewer than two seeds)."""

    value: float
    low: float
    high: float


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> MeanInterval:
    """Mean and Student's t interval over seeds; NaN bounds with fewer than two values."""
    from scipy import stats  # here, not at import: `cxr-tune export --help` stays fast

    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return MeanInterval(math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if x.size < 2:
        return MeanInterval(mean, math.nan, math.nan)
    sem = float(stats.sem(x))
    if sem == 0.0:
        return MeanInterval(mean, mean, mean)
    low, high = stats.t.interval(confidence, x.size - 1, loc=mean, scale=sem)
    return MeanInterval(mean, float(low), float(high))


@dataclass(frozen=True)
class RerunScores:
    """One planned configuration and its scores, one per seed that reported the metric."""

    rank: int
    """The sweep's rank of the configuration (1 = its best)."""
    trial_id: str
    sweep_value: float
    params: dict
    seeds: list[int]
    values: list[float]
    checkpoints: list[ScoredCheckpoint] = field(default_factory=list)
    """Each seed's scored checkpoint (its best kept one), in the order of `seeds`."""

    @property
    def interval(self) -> MeanInterval:
        return t_interval(self.values)


def load_rerun(folder: Path) -> tuple[RerunPlan, list[RerunScores]]:
    """A re-run's plan and each configuration's per-seed scores, in the sweep's rank order."""
    plan = files.read_rerun_plan(folder)
    found: dict[int, dict[int, ScoredCheckpoint]] = {c["rank"]: {} for c in plan.configs}
    for d in files.trial_dirs(folder):
        params = files.read_params(d)
        config = plan.config_of(params)
        best = files.best_of(files.trial_checkpoints(d, plan.metric), plan.mode)
        if config is None or best is None:
            continue  # a trial of no planned configuration, or one that never scored
        found[config["rank"]][int(params.get("seed", 0))] = best
    scores = []
    for c in sorted(plan.configs, key=lambda c: c["rank"]):
        by_seed = found[c["rank"]]
        seeds = sorted(by_seed)
        scores.append(
            RerunScores(
                rank=c["rank"],
                trial_id=str(c["trial_id"]),
                sweep_value=float(c["value"]),
                params=dict(c["params"]),
                seeds=seeds,
                values=[by_seed[s].value for s in seeds],
                checkpoints=[by_seed[s] for s in seeds],
            )
        )
    return plan, scores


def is_complete(plan: RerunPlan, scores: Sequence[RerunScores]) -> bool:
    """Every planned configuration scored for every planned seed."""
    return len(scores) == len(plan.configs) and all(
        sorted(s.seeds) == sorted(plan.seeds) for s in scores
    )


def separated(first: RerunScores, second: RerunScores, mode: str) -> bool:
    """Whether the first configuration's interval lies entirely on the better side of the
    second's (no overlap of the two 95 % intervals)."""
    a, b = first.interval, second.interval
    if any(math.isnan(v) for v in (a.low, a.high, b.low, b.high)):
        return False
    return a.low > b.high if mode == "max" else a.high < b.low


def by_mean(scores: Sequence[RerunScores], mode: str) -> list[RerunScores]:
    """Configurations with scores, best mean first (ties: the sweep's better rank)."""
    scored = [s for s in scores if s.values]
    sign = -1.0 if mode == "max" else 1.0
    return sorted(scored, key=lambda s: (sign * s.interval.value, s.rank))


def typical_seed(scores: RerunScores) -> int:
    """The index of the seed whose score is closest to the configuration's mean (ties: the
    smaller seed): the exported model is a typical draw of the configuration."""
    mean = scores.interval.value
    return min(range(len(scores.values)), key=lambda i: (abs(scores.values[i] - mean), i))


@dataclass(frozen=True)
class Selection:
    """The selected configuration of a re-run and the checkpoint to export."""

    plan: RerunPlan
    folder: Path
    chosen: RerunScores
    runner_up: RerunScores | None
    checkpoint: ScoredCheckpoint
    seed: int

    def record(self) -> dict[str, Any]:
        """bundle.json's (and summary.json's) `selection`."""
        iv = self.chosen.interval
        out: dict[str, Any] = {
            "by": f"mean over {len(self.chosen.values)} seeds",
            "metric": self.plan.metric,
            "mode": self.plan.mode,
            "rerun": self.plan.name,
            "mean": iv.value,
            "interval": {"low": _num(iv.low), "high": _num(iv.high), "confidence": CONFIDENCE},
            "seeds": list(self.chosen.seeds),
            "values": list(self.chosen.values),
            "sweep_rank": self.chosen.rank,
            "sweep_trial_id": self.chosen.trial_id,
            "sweep_value": self.chosen.sweep_value,
            "exported_seed": self.seed,
            "exported_value": self.checkpoint.value,
            "exported_is": "the seed closest to the mean",
        }
        if self.runner_up is not None:
            ru = self.runner_up.interval
            out["runner_up"] = {
                "sweep_rank": self.runner_up.rank,
                "sweep_trial_id": self.runner_up.trial_id,
                "mean": ru.value,
                "interval": {"low": _num(ru.low), "high": _num(ru.high)},
            }
            out["separated"] = separated(self.chosen, self.runner_up, self.plan.mode)
        return out


def _num(value: float) -> float | None:
    return None if math.isnan(value) else value


def select(plan: RerunPlan, folder: Path, scores: Sequence[RerunScores]) -> Selection | None:
    """The best-mean configuration and its closest-to-mean seed; None when nothing scored."""
    ordered = by_mean(scores, plan.mode)
    if not ordered:
        return None
    chosen = ordered[0]
    i = typical_seed(chosen)
    runner_up = ordered[1] if len(ordered) > 1 else None
    return Selection(plan, Path(folder), chosen, runner_up, chosen.checkpoints[i], chosen.seeds[i])


def rerun_age(folder: Path) -> tuple[str, str]:
    """Sort key of a re-run, oldest first: its plan's creation time, then its name."""
    try:
        return (files.read_rerun_plan(folder).created, folder.name)
    except ValueError:
        return ("", folder.name)


def newest_complete_rerun(
    experiment_dir: Path, metric: str, mode: str
) -> tuple[Selection | None, list[str]]:
    """The selection of the newest complete re-run that ranks by `metric` (`mode`), and a note
    for each newer re-run passed over and why."""
    notes = []
    for folder in sorted(files.rerun_dirs(experiment_dir), key=rerun_age, reverse=True):
        try:
            plan, scores = load_rerun(folder)
        except ValueError as err:
            notes.append(f"re-run {folder.name} not read: {err}")
            continue
        if (plan.metric, plan.mode) != (metric, mode):
            notes.append(f"re-run {folder.name} ranks by {plan.metric} ({plan.mode}), not {metric}")
        elif not is_complete(plan, scores):
            notes.append(
                f"re-run {folder.name} is incomplete (a seed of a configuration is missing)"
            )
        elif (selection := select(plan, folder, scores)) is not None:
            return selection, notes
    return None, notes


def choose_checkpoint(
    experiment_dir: Path, metric: str, mode: str
) -> tuple[ScoredCheckpoint, dict[str, Any]]:
    """The checkpoint to export and bundle.json's `selection` record: the newest complete
    re-run's best-mean configuration, else the sweep's single best checkpoint."""
    selection, notes = newest_complete_rerun(experiment_dir, metric, mode)
    if selection is not None:
        return selection.checkpoint, {**selection.record(), "notes": notes}
    best = files.best_checkpoint(experiment_dir, metric, mode)
    return best, {"by": SINGLE_RUN, "metric": metric, "mode": mode, "notes": notes}


def describe(selection: dict[str, Any]) -> str:
    """One line on how the exported model was chosen (export's output, the sweep's headline)."""
    if selection.get("by") == SINGLE_RUN or "mean" not in selection:
        return f"selection: {SINGLE_RUN}; the headline is one seed's luckiest epoch"
    iv = selection["interval"]
    bounds = (
        f"[{iv['low']:.4f}, {iv['high']:.4f}]" if iv.get("low") is not None else "(no interval)"
    )
    line = (
        f"selection: {selection['by']} (re-run {selection['rerun']}): {selection['metric']} "
        f"mean {selection['mean']:.4f}, 95 % CI {bounds}; sweep rank "
        f"#{selection['sweep_rank']}; exported seed {selection['exported_seed']} "
        f"({selection['exported_value']:.4f}, the seed closest to the mean)"
    )
    ru = selection.get("runner_up")
    if ru:
        clear = "separate" if selection.get("separated") else "overlap"
        line += (
            f"; runner-up sweep rank #{ru['sweep_rank']} mean {ru['mean']:.4f}, intervals {clear}"
        )
    return line
