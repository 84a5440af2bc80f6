"""The sweep's Tuner pieces (search.tuner), built from the experiment record, no Ray started."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from search.space import load_space
from search.tuner import TunerSettings, build_scheduler, build_searcher, settings_for
from trainables.experiment import ExperimentRecord

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def space():
    return load_space(REPO / "spaces" / "smoke.py")


def test_settings_come_from_the_record(space) -> None:
    record = ExperimentRecord(
        name="exp",
        storage="/runs",
        metric=space.metric,
        mode=space.mode,
        max_epochs=space.max_epochs,
        grace_period=1,
        reduction_factor=2,
        num_samples=5,
        max_concurrent=2,
        args={"seed": 3, "time_budget": 30.0, "wandb_project": "p"},
    )
    settings = settings_for(record, space)
    assert (settings.metric, settings.mode, settings.max_epochs) == (
        space.metric,
        space.mode,
        space.max_epochs,
    )
    assert (settings.seed, settings.time_budget_s, settings.wandb_project) == (3, 30.0, "p")
    assert (settings.num_samples, settings.max_concurrent, settings.reduction_factor) == (5, 2, 2)
    # --max-failures: retries as given (0 included); the default of 2 without the flag.
    assert settings.max_failures == 2
    no_retries = replace(record, args={**record.args, "max_failures": 0})
    assert settings_for(no_retries, space).max_failures == 0


def test_searcher_and_scheduler_follow_the_settings(space) -> None:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter

    base = dict(name="e", storage="/r", metric="val_loss", mode="min", max_epochs=3)
    settings = TunerSettings(**base, num_samples=4, grace_period=1, reduction_factor=3)
    asha = build_scheduler(settings)
    assert isinstance(asha, ASHAScheduler) and asha._max_t == 3
    assert not isinstance(build_searcher(settings, space.define), ConcurrencyLimiter)
    limited = TunerSettings(
        **base, num_samples=4, grace_period=1, reduction_factor=3, max_concurrent=2
    )
    assert isinstance(build_searcher(limited, space.define), ConcurrencyLimiter)
    fifo = TunerSettings(**base, num_samples=4, grace_period=1, reduction_factor=3, asha=False)
    assert isinstance(build_scheduler(fifo), FIFOScheduler)
    grid = TunerSettings(**base, num_samples=1, grace_period=1, reduction_factor=3, search="grid")
    assert build_searcher(grid, space.define) is None
    with pytest.raises(ValueError, match="unknown search 'bayes'"):
        TunerSettings(**base, num_samples=1, grace_period=1, reduction_factor=3, search="bayes")
    with pytest.raises(ValueError, match="unknown mode 'up'"):
        TunerSettings(**{**base, "mode": "up"}, num_samples=1, grace_period=1, reduction_factor=3)


def test_tpe_startup_is_a_third_of_the_budget_plus_the_enqueued_points(space) -> None:
    from search.tuner import startup_trials, tpe_startup

    # Optuna's default of 10 random trials would keep a 10-trial sweep random to the end.
    assert [startup_trials(n, 0) for n in (1, 5, 10, 12, 48)] == [3, 3, 3, 4, 16]
    assert startup_trials(10, 2) == 5  # enqueued points are not random trials
    base = dict(name="e", storage="/r", metric="val_loss", mode="min", max_epochs=3)
    settings = TunerSettings(
        **base, num_samples=12, grace_period=1, reduction_factor=3, points_to_evaluate=[{}] * 2
    )
    assert tpe_startup(settings) == 6
    assert build_searcher(settings, space.define).sampler._n_startup_trials == 6
    # A record written before the field existed still loads; its settings compute the count.
    old = ExperimentRecord.from_dict({"name": "x", "metric": "val_loss", "mode": "min"})
    assert old.tpe_startup_trials is None and old.points_to_evaluate == []
    recorded = ExperimentRecord(name="x", metric="val_loss", mode="min", tpe_startup_trials=7)
    assert settings_for(recorded, space).n_startup_trials == 7


def test_cpu_profile_leaves_out_points_it_cannot_train() -> None:
    cpu = load_space(REPO / "spaces" / "transfer.py", cpu=True)
    full = load_space(REPO / "spaces" / "transfer.py")
    # The seed's SimpleCNN recipe runs on the CPU; its ResNet50 (outside CPU_CHOICES) does not.
    # The recipe and its two learning-rate neighbours, then the ResNet50 recipe.
    assert [p["model"] for p in full.points_to_evaluate] == ["simple_cnn"] * 3 + ["resnet50"]
    assert [p["model"] for p in cpu.points_to_evaluate] == ["simple_cnn"] * 3
    assert [p["lr"] for p in cpu.points_to_evaluate] == [1e-4, 3e-5, 3e-4]
    assert [p["model"] for p in cpu.dropped_points] == ["resnet50"]
    recipe = cpu.samples[0]  # the first sample is the first point, built as a TrialConfig
    assert (recipe.model, recipe.lr, recipe.weight_decay) == ("simple_cnn", 1e-4, 5e-5)
    assert (recipe.balance, recipe.augment) == ("oversample", "none")


def test_a_point_naming_an_unsuggested_parameter_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        'METRIC = "val_loss"\nMODE = "min"\nMAX_EPOCHS = 1\n'
        'POINTS_TO_EVALUATE = [{"lr": 1e-3, "momentum": 0.9}]\n'
        'def define(trial):\n    trial.suggest_float("lr", 1e-5, 1e-2, log=True)\n'
    )
    with pytest.raises(ValueError, match=r"POINTS_TO_EVALUATE\[0\] names \['momentum'\]"):
        load_space(bad)


def test_points_search_runs_exactly_the_given_configs(space) -> None:
    from ray.tune.search.basic_variant import BasicVariantGenerator

    base = dict(name="e", storage="/r", metric="val_loss", mode="min", max_epochs=3)
    points = ({"lr": 1e-3, "seed": 1}, {"lr": 1e-3, "seed": 2})
    settings = TunerSettings(
        **base,
        num_samples=2,
        grace_period=1,
        reduction_factor=2,
        search="points",
        points_to_evaluate=points,
    )
    searcher = build_searcher(settings, None)
    # search.rerun's searcher: Ray's variant generator holding only the re-run's configs.
    assert isinstance(searcher, BasicVariantGenerator)
    assert list(searcher._points_to_evaluate) == list(points)


def test_auto_sampler_follows_the_space_and_the_budget() -> None:
    from search.tuner import GP_MAX_TRIALS, choose_sampler

    numeric = {"lr": "float", "batch_size": "int"}
    # A small numeric space is GP territory; a categorical or a large budget is TPE's.
    assert choose_sampler("auto", 20, numeric) == "gp"
    assert choose_sampler("auto", GP_MAX_TRIALS + 1, numeric) == "tpe"
    assert choose_sampler("auto", 20, {**numeric, "model": "categorical"}) == "tpe"
    assert choose_sampler("auto", 20, {}) == "tpe"  # nothing searched: no model to fit
    assert choose_sampler("random", 20, numeric) == "random"  # an explicit choice is kept
    with pytest.raises(ValueError, match="expected one of"):
        choose_sampler("hebo", 20, numeric)


def test_space_file_sampler_and_parameter_kinds(tmp_path) -> None:
    src = (REPO / "spaces" / "smoke.py").read_text()
    path = tmp_path / "gp_space.py"
    path.write_text(src + '\nSAMPLER = "gp"\n')
    space = load_space(path)
    assert space.sampler == "gp"
    transfer = load_space(REPO / "spaces" / "transfer.py")
    # The walk records each name's kind as Optuna saw it.
    assert transfer.param_kinds["lr"] == "float" and transfer.param_kinds["model"] == "categorical"
    path.write_text(src + '\nSAMPLER = "cma"\n')
    with pytest.raises(ValueError, match="SAMPLER 'cma' must be one of"):
        load_space(path)


@pytest.mark.parametrize("sampler", ["tpe", "gp", "random"])
def test_each_sampler_is_seeded_and_asks_for_valid_configs(space, sampler) -> None:
    import optuna

    from search.tuner import build_sampler

    settings = TunerSettings(
        name="e", storage="/r", metric="val_loss", mode="min", max_epochs=2, num_samples=6,
        grace_period=1, reduction_factor=3, seed=7, search=sampler, n_startup_trials=2,
    )  # fmt: skip
    assert build_searcher(settings, space.define) is not None

    def params_of_a_study() -> list[dict]:
        study = optuna.create_study(sampler=build_sampler(settings))
        rows = []
        for _ in range(4):  # past the 2 start-up trials: the model proposes the last two
            trial = study.ask()
            space.define(trial)
            study.tell(trial, float(sum(len(str(v)) % 7 for v in trial.params.values())))
            rows.append(trial.params)
        return rows

    first = params_of_a_study()
    assert first == params_of_a_study()  # same seed, same proposals: a sweep can be replayed
    assert all(set(p) for p in first)
