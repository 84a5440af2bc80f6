"""The Ray Tune `Tuner` of a sweep: searcher, scheduler, checkpoints, callbacks, resources.

`build_tuner` is what `search.run` fits and what `bench/` measures, from one typed
`TunerSettings`; metric and mode go, from that one place, to the searcher, the scheduler and
the checkpoint ranking (Ray misbehaves when they are set in two places).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from search.space import Space
from search.tracking import experiment_config
from trainables.experiment import (
    DEFAULT_WANDB_PROJECT,
    TRIAL_DIR_PREFIX,
    ExperimentRecord,
    check_mode,
    journal_path,
)

MAX_FAILURES = 2  # retries of a trial whose worker died, from its last checkpoint
CHECKPOINTS_KEPT = 2  # Ray keeps the best this many by the metric plus, always, the latest one
# The Optuna samplers a sweep can search with (`build_sampler`); grid: no searcher,
# `param_space` holds full configs; points: exactly `points_to_evaluate`
SAMPLERS = ("tpe", "gp", "random")
SEARCHERS = (*SAMPLERS, "grid", "points")
GP_MAX_TRIALS = 100  # trials; Optuna's sampler guidance puts 10-100 trials in GP territory
MIN_RANDOM_TRIALS = 3  # TPE's random start-up trials, at least (a model needs a few points)
RANDOM_SHARE = 3  # about 1/RANDOM_SHARE of the budget is random start-up before TPE models


def choose_sampler(requested: str, num_samples: int, param_kinds: Mapping[str, str]) -> str:
    """The sampler a sweep uses: `requested` (a space's SAMPLER or --sampler), or for `auto`
    the rule of Optuna's own guidance (its AutoSampler): a Gaussian process for a budget of at
    most GP_MAX_TRIALS trials over numeric parameters only, TPE as soon as the space has a
    categorical parameter (conditional ones are categorical choices here) or a larger budget."""
    if requested != "auto":
        if requested not in SAMPLERS:
            raise ValueError(f"unknown sampler {requested!r}; expected one of {list(SAMPLERS)}")
        return requested
    numeric = all(kind in ("float", "int") for kind in param_kinds.values())
    return "gp" if numeric and param_kinds and num_samples <= GP_MAX_TRIALS else "tpe"


def startup_trials(num_samples: int, n_points: int) -> int:
    """TPE's n_startup_trials for a budget: the enqueued points (they are not random) plus about
    a third of the trials, at least 3, so a 10-trial sweep leaves random search after 3 random
    trials instead of Optuna's default 10."""
    return n_points + max(MIN_RANDOM_TRIALS, round(num_samples / RANDOM_SHARE))


@dataclass(frozen=True)
class TunerSettings:
    """Everything `build_tuner` needs besides the space's `define` and the trainable."""

    name: str
    storage: str
    """Local folder or URI; the experiment lives at STORAGE/NAME."""
    metric: str
    mode: str
    max_epochs: int
    """ASHA's max_t: one report per epoch."""
    num_samples: int
    grace_period: int
    """Epochs before ASHA may stop a trial."""
    reduction_factor: int
    max_concurrent: int | None = None
    """None: as many trials at once as the resources allow."""
    seed: int = 0
    search: str = "tpe"
    asha: bool = True
    """False: every trial runs all epochs (FIFO)."""
    points_to_evaluate: Sequence[dict[str, Any]] = ()
    """Configurations the searcher evaluates first, in order (Optuna's enqueue_trial)."""
    n_startup_trials: int | None = None
    """TPE's start-up count; None: `startup_trials(num_samples, len(points_to_evaluate))`."""
    time_budget_s: float | None = None
    max_failures: int = MAX_FAILURES
    wandb_project: str = DEFAULT_WANDB_PROJECT
    wandb_mode: str = "disabled"
    wandb_dir: str = ""
    progress: bool = True
    """Print one line per trial event (`search.progress`)."""
    # Optuna on disk and what W&B records about the experiment (issue 13).
    optuna_journal: str = ""
    """Optuna JournalStorage file, study name = `name`; "" keeps the study in memory."""
    experiment: Mapping[str, Any] = field(default_factory=dict)
    """The experiment's part of every W&B run's config (`search.tracking.experiment_config`)."""

    def __post_init__(self) -> None:
        check_mode(self.mode, "TunerSettings.mode")
        if self.search not in SEARCHERS:
            raise ValueError(f"unknown search {self.search!r}; expected one of {list(SEARCHERS)}")


def settings_for(record: ExperimentRecord, space: Space) -> TunerSettings:
    """The product's sweep: what the experiment record decided, with the space's first points."""
    return TunerSettings(
        name=record.name,
        storage=record.storage,
        metric=record.metric,
        mode=record.mode,
        max_epochs=record.max_epochs or space.max_epochs,
        num_samples=record.num_samples or space.num_samples,
        grace_period=record.grace_period or space.grace_period,
        reduction_factor=record.reduction_factor or space.reduction_factor,
        max_concurrent=record.max_concurrent,
        seed=record.seed,
        search=record.sampler,
        points_to_evaluate=tuple(record.points_to_evaluate or space.points_to_evaluate),
        n_startup_trials=record.tpe_startup_trials,
        time_budget_s=record.time_budget,
        max_failures=MAX_FAILURES if record.max_failures is None else record.max_failures,
        wandb_project=record.wandb_project,
        wandb_mode=record.wandb_mode,
        wandb_dir=record.wandb_dir,
        optuna_journal=str(journal_path(record.local_dir)),
        experiment=experiment_config(record),
    )


def build_searcher(settings: TunerSettings, define: Callable) -> Any | None:
    """An Optuna searcher over `define` with the sampler `build_sampler` names, pruned trials
    marked PRUNED; Ray's variant generator for fixed points; None for a grid."""
    if settings.search == "grid":
        return None
    if settings.search == "points":  # full configs, each run once (search.rerun)
        from ray.tune.search.basic_variant import BasicVariantGenerator

        points = list(settings.points_to_evaluate)
        return BasicVariantGenerator(
            points_to_evaluate=points, max_concurrent=settings.max_concurrent or 0
        )
    from ray.tune.search import ConcurrencyLimiter

    from search.optuna_pruned import PrunedOptunaSearch

    searcher = PrunedOptunaSearch(
        space=define,
        metric=settings.metric,
        mode=settings.mode,
        sampler=build_sampler(settings),
        points_to_evaluate=list(settings.points_to_evaluate) or None,
        max_epochs=settings.max_epochs,
        journal_file=settings.optuna_journal,  # "": in memory
        study_name=settings.name,
    )
    if settings.max_concurrent:
        searcher = ConcurrencyLimiter(searcher, max_concurrent=settings.max_concurrent)
    return searcher


def build_sampler(settings: TunerSettings) -> Any:
    """The seeded Optuna sampler named by `settings.search`: TPE (multivariate, constant liar
    for concurrent asks), a Gaussian process (Optuna's GPSampler, which conditions on running
    trials for concurrent asks) or random sampling. TPE and GP start with the same random
    start-up count (`tpe_startup`)."""
    import optuna

    if settings.search == "tpe":
        return optuna.samplers.TPESampler(
            seed=settings.seed,
            multivariate=True,
            constant_liar=True,
            n_startup_trials=tpe_startup(settings),
        )
    if settings.search == "gp":
        return optuna.samplers.GPSampler(
            seed=settings.seed,
            n_startup_trials=tpe_startup(settings),
            warn_independent_sampling=False,  # conditional names fall back to random, quietly
        )
    return optuna.samplers.RandomSampler(seed=settings.seed)


def tpe_startup(settings: TunerSettings) -> int:
    """The start-up count the TPE searcher of `settings` uses."""
    if settings.n_startup_trials is not None:
        return settings.n_startup_trials
    return startup_trials(settings.num_samples, len(settings.points_to_evaluate))


def build_scheduler(settings: TunerSettings) -> Any:
    """ASHA on epochs, or FIFO (no early stopping) when `settings.asha` is False."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if not settings.asha:
        return FIFOScheduler()
    return ASHAScheduler(
        metric=settings.metric,
        mode=settings.mode,
        time_attr="training_iteration",  # one report per epoch
        max_t=settings.max_epochs,  # epochs
        grace_period=settings.grace_period,  # epochs
        reduction_factor=settings.reduction_factor,
    )


def trial_dirname(trial: Any) -> str:
    """Short trial directories (Ray's default packs the whole config into the name)."""
    return f"{TRIAL_DIR_PREFIX}{trial.trial_id}"


def make_trainable(
    cpus_per_trial: float,
    gpus_per_trial: float | None,
    card_bytes: int | None,
    train_images: int = 0,
) -> Any:
    """`search.trainable.train_trial` with each trial's CPU/GPU request (`search.resources`),
    sized for a train split of `train_images` images."""
    from ray import tune

    from search.resources import trial_resources
    from search.trainable import train_trial

    resources = trial_resources(
        cpus_per_trial, gpus_per_trial, card_bytes or None, train_images=train_images
    )
    return tune.with_resources(train_trial, resources=resources)


def _callbacks(settings: TunerSettings, extra: Sequence[Any]) -> list[Any]:
    from search.progress import make_progress_callback

    callbacks = list(extra)
    if settings.progress:
        callbacks.append(
            make_progress_callback(
                settings.metric, settings.mode, settings.max_epochs, settings.num_samples
            )
        )
    if settings.wandb_mode == "disabled":  # nothing of wandb is imported
        return callbacks
    from search.wandb_callback import wandb_callback

    wandb_dir = Path(settings.wandb_dir or Path(settings.storage) / settings.name)
    callbacks.append(
        wandb_callback(
            settings.wandb_project,
            settings.name,
            settings.wandb_mode,
            wandb_dir,
            metric=settings.metric,
            metric_mode=settings.mode,
            max_epochs=settings.max_epochs,
            experiment=settings.experiment,
        )
    )
    return callbacks


def build_tuner(
    settings: TunerSettings,
    define: Callable,
    trainable: Any,
    *,
    param_space: dict[str, Any] | None = None,
    callbacks: Sequence[Any] = (),
    stop: Any = None,
) -> Any:
    """A `tune.Tuner` over `define` (a space's `SpaceDefine`), or over `param_space` for a grid;
    `stop` is Ray's `RunConfig.stop` (a `tune.Stopper`, e.g. a benchmark's epoch budget)."""
    from ray import tune

    searcher = build_searcher(settings, define)
    run_config = tune.RunConfig(
        name=settings.name,
        storage_path=settings.storage,
        callbacks=_callbacks(settings, callbacks),
        stop=stop,
        verbose=0,  # the progress lines replace Ray's tables
        checkpoint_config=tune.CheckpointConfig(
            num_to_keep=CHECKPOINTS_KEPT,
            checkpoint_score_attribute=settings.metric,
            checkpoint_score_order=settings.mode,
        ),
        failure_config=tune.FailureConfig(max_failures=settings.max_failures),
    )
    tune_config = tune.TuneConfig(
        search_alg=searcher,
        scheduler=build_scheduler(settings),
        num_samples=settings.num_samples,
        # A searcher is limited by its ConcurrencyLimiter; a grid by Ray's own limit.
        max_concurrent_trials=settings.max_concurrent if searcher is None else None,
        time_budget_s=settings.time_budget_s,
        reuse_actors=True,  # skip process start-up and dataset loading between trials
        trial_dirname_creator=trial_dirname,
    )
    return tune.Tuner(
        trainable, param_space=param_space, tune_config=tune_config, run_config=run_config
    )


def restore_tuner(settings: TunerSettings, trainable: Any, callbacks: Sequence[Any] = ()) -> Any:
    """The Tuner of the experiment at STORAGE/NAME (where it is now), restored to continue.

    The callbacks pickled in its tuner.pkl still hold the folders and trial count of the run
    that saved them (a copied experiment's would log W&B runs into the original), so the
    restored Tuner gets fresh ones built from `settings`.
    """
    from ray import tune

    from search.storage import experiment_path

    tuner = tune.Tuner.restore(
        experiment_path(settings.storage, settings.name),
        trainable=trainable,
        resume_unfinished=True,
        resume_errored=True,
    )
    # Private (checked on Ray 2.60.0): no public way to replace a restored Tuner's callbacks.
    tuner._local_tuner.get_run_config().callbacks = _callbacks(settings, callbacks)
    return tuner
