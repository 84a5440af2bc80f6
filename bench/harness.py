"""A real Ray Tune sweep for the benchmarks, built by the product's own builder, plus timing.

`run_sweep` fits the Tuner of `search.tuner.build_tuner` (what `search.run` fits): the product's
trainable (`search.trainable.train_trial`: the shared decode cache, the dataset kept across
reused actors, the fast training path) with `reuse_actors=True`, `PrunedOptunaSearch` (seeded
TPE, multivariate, constant liar) or a seeded random sampler, ASHA on `training_iteration` or no
early stopping, CPU/GPU resources from `search.resources`, W&B from `search.tracking` when asked.
A `Timeline` callback records, in the driver, the wall time of every trial start and every
result, which is what the overhead and utilization figures are computed from. Ray is started
once per process (`start_ray`) with a short temp dir and stopped by `stop_ray`.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray import tune

from search.space import Space

# Keys of each result row kept by the Timeline (everything the figures need).
RESULT_KEYS = (
    "epoch",
    "epoch_time",
    "train_time",
    "images_trained",
    "train_images_per_s",
    "time_this_iter_s",
    "time_total_s",
    "val_acc",
    "val_precision",
    "val_loss",
    "pid",
)


@dataclass
class TimedTrial:
    trial_id: str
    config: dict[str, Any]
    started: float  # driver wall clock, seconds
    results: list[dict[str, Any]] = field(default_factory=list)  # each with "wall"
    ended: float | None = None

    @property
    def images_trained(self) -> float:
        return sum(r.get("images_trained", 0.0) for r in self.results)

    def first_batch_latency(self) -> float | None:
        """Seconds from the trial's start to its first training step: the first result's arrival
        minus that epoch's training and validation (an upper bound: it also holds the first
        checkpoint save and the report's trip to the driver)."""
        if not self.results:
            return None
        first = self.results[0]
        return first["wall"] - self.started - first.get("epoch_time", 0.0)


class Timeline(tune.Callback):
    """Wall-clock times of trial starts, results and ends, seen from the driver. Tune calls
    `on_trial_start` once the trial's actor is up (a new process, or a reused one)."""

    def __init__(self) -> None:
        self.trials: dict[str, TimedTrial] = {}
        self.fit_started = time.time()

    def setup(self, **info: Any) -> None:
        self.fit_started = time.time()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.trials[trial.trial_id] = TimedTrial(trial.trial_id, dict(trial.config), time.time())

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self._add(trial, result)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        record = self.trials[trial.trial_id]
        record.ended = time.time()
        last = trial.last_result or {}
        # Ray does not call on_trial_result for the result on which a trial stops.
        if last and (not record.results or record.results[-1].get("epoch") != last.get("epoch")):
            self._add(trial, last)

    def _add(self, trial: Any, result: dict[str, Any]) -> None:
        row = {k: result[k] for k in RESULT_KEYS if k in result}
        row["wall"] = time.time()
        self.trials[trial.trial_id].results.append(row)


@dataclass
class Sweep:
    wall_s: float  # seconds of Tuner.fit
    trials: list[TimedTrial]
    storage: Path
    fit_started: float  # driver wall clock, seconds

    def idle_gaps(self) -> list[float]:
        """For trials run one at a time: seconds from the previous trial's end (the sweep's
        start for the first) to this trial's first training step, i.e. the device's idle time
        between trials: actor start or reuse, data load, model build."""
        gaps, previous_end = [], self.fit_started
        for t in self.trials:
            first = t.first_batch_latency()
            if first is None or t.ended is None:
                continue
            gaps.append(t.started + first - previous_end)
            previous_end = t.ended
        return gaps


def start_ray(num_cpus: int | None = None, num_gpus: int | None = None) -> str | None:
    """Start a local Ray (short temp dir for its socket paths) and return the temp dir; None
    when Ray is already running in this process (then the caller leaves it running)."""
    if ray.is_initialized():
        return None
    temp_dir = tempfile.mkdtemp(prefix="rb", dir="/tmp")
    ray.init(
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        object_store_memory=150 * 2**20,  # bytes; trials pass nothing big through it
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=temp_dir,
    )
    return temp_dir


def stop_ray(temp_dir: str | None) -> None:
    if temp_dir is None:
        return
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


def run_sweep(
    space: Space,
    *,
    num_samples: int,
    storage: Path,
    name: str,
    search: str = "tpe",
    asha: bool = True,
    max_concurrent: int = 1,
    cpus_per_trial: float = 1.0,
    gpus_per_trial: float | None = 0.0,
    card_bytes: int | None = None,
    grace_period: int | None = None,
    reduction_factor: int | None = None,
    seed: int = 0,
    wandb_mode: str = "disabled",
    param_space: dict[str, Any] | None = None,
    stop: Any = None,
) -> Sweep:
    """One sweep; `search` is 'tpe', 'random' or 'grid' (then `param_space` holds full configs).
    `gpus_per_trial` None sizes each trial's GPU share from its model (`card_bytes` of the card).
    The Tuner is the product's (`search.tuner.build_tuner`), without the progress lines; the
    space's POINTS_TO_EVALUATE run first, as in `search.run`; `stop` is Ray's RunConfig.stop."""
    from search.tuner import TunerSettings, build_tuner, make_trainable

    settings = TunerSettings(
        name=name,
        storage=str(storage),
        metric=space.metric,
        mode=space.mode,
        max_epochs=space.max_epochs,
        num_samples=num_samples,
        grace_period=grace_period or space.grace_period,
        reduction_factor=reduction_factor or space.reduction_factor,
        max_concurrent=max_concurrent,
        seed=seed,
        search=search,
        asha=asha,
        points_to_evaluate=tuple(space.points_to_evaluate),
        wandb_project="cxr-tune-bench",
        wandb_mode=wandb_mode,
        wandb_dir=str(storage / name),
        progress=False,
    )
    timeline = Timeline()
    tuner = build_tuner(
        settings,
        space.define,
        make_trainable(cpus_per_trial, gpus_per_trial, card_bytes),
        param_space=param_space,
        callbacks=[timeline],
        stop=stop,
    )
    started = time.perf_counter()
    grid = tuner.fit()
    wall = time.perf_counter() - started
    errors = [r for r in grid if r.error is not None]
    if errors:
        raise RuntimeError(f"{len(errors)} trial(s) of sweep {name} failed: {errors[0].error}")
    trials = sorted(timeline.trials.values(), key=lambda t: t.started)
    return Sweep(wall, trials, storage / name, timeline.fit_started)


def space_for(
    path: Path,
    defaults: dict[str, Any],
    overrides: dict[str, Any],
    max_epochs: int | None,
    cpu: bool = False,
) -> Space:
    """Load a space file as search.run does (`defaults` < the space's constants < `overrides`;
    `cpu`: only the space's CPU_CHOICES, as the CPU profile), with its pretrained files fetched
    by the driver's own step; a weight set it cannot fetch (offline) is left out, loudly."""
    from search.pretrained import drop_missing, prepare_models
    from search.space import load_space

    space = load_space(path, defaults=defaults, overrides=overrides, max_epochs=max_epochs, cpu=cpu)
    return drop_missing(space, prepare_models(space, allow_missing=True))
