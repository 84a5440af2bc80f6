"""Space files: every shipped space samples into valid configs; every bad one is refused clearly."""

from __future__ import annotations

import pickle
import textwrap
from pathlib import Path

import optuna
import pytest

from search.space import SpaceDefine, builtin_spaces, find_space, load_space, sample_configs
from trainables.config import TrialConfig, field_names
from trainables.models import TORCHVISION_MODELS

REPO = Path(__file__).resolve().parents[2]
SPACES = sorted(p for p in (REPO / "spaces").glob("*.py") if p.stem != "__init__")
RUN = {"defaults": {"image_size": 64}, "overrides": {"data": "phantom:small", "seed": 0}}


@pytest.mark.parametrize("path", SPACES, ids=[p.stem for p in SPACES])
def test_every_space_samples_valid_trial_configs(path: Path) -> None:
    space = load_space(path, **RUN)
    configs = sample_configs(space.define, str(path), space.points_to_evaluate, n=20, seed=1)
    # 20 seeded random samples (plus any fixed points) all build a TrialConfig.
    assert len(configs) >= 20 and all(isinstance(c, TrialConfig) for c in configs)
    # The run's epochs are ASHA's max_t, for every trial.
    assert {c.epochs for c in configs} == {space.max_epochs}
    assert space.mode in ("max", "min") and 1 <= space.grace_period <= space.max_epochs


def test_transfer_space_suggests_frozen_depth_only_for_torchvision_models() -> None:
    space = load_space(REPO / "spaces" / "transfer.py", **RUN)
    configs = sample_configs(space.define, "transfer", n=60, seed=3)
    cnn = [c for c in configs if c.model not in TORCHVISION_MODELS]
    tv = [c for c in configs if c.model in TORCHVISION_MODELS]
    # Both branches are sampled, and the CNN branch never carries transfer settings.
    assert cnn and tv
    assert all(c.frozen_depth == 0 and c.weights == "none" for c in cnn)
    assert any(c.frozen_depth > 0 for c in tv)
    # lr and weight decay stay inside the design card's log ranges.
    assert all(1e-5 <= c.lr <= 1e-2 and 1e-6 <= c.weight_decay <= 1e-3 for c in configs)


def test_seed_space_covers_the_seed_tables_once_each() -> None:
    space = load_space(REPO / "spaces" / "seed.py", **RUN)
    configs = sample_configs(space.define, "seed", space.points_to_evaluate, n=0)
    settings = {(c.model, c.balance, c.frozen_depth, c.unfrozen_blocks) for c in configs}
    # The study's recipe for Tables 1-3 and 5: Adam 1e-4, weight decay 5e-5, no augmentation.
    assert {(c.lr, c.weight_decay, c.augment) for c in configs} == {(1e-4, 5e-5, "none")}
    balances = ("original", "undersample", "oversample", "class_weights")
    expected = {(m, b, 0, 0) for m in ("simple_cnn", "simple_cnn_10m") for b in balances}
    expected.add(("resnet50", "oversample", 5, 1))  # Table 3's fine-tuning
    assert settings == expected and space.num_samples == len(expected)
    # ASHA never stops a seed run: each one is a table row.
    assert space.grace_period == space.max_epochs


def test_space_define_survives_pickling_with_its_run_constants(tmp_path: Path) -> None:
    define = load_space(REPO / "spaces" / "smoke.py", **RUN).define
    clone = pickle.loads(pickle.dumps(define))  # what Ray does to the searcher on save/restore

    def sample(fn: SpaceDefine) -> dict:
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=7))
        trial = study.ask()
        return {**fn(trial), **trial.params}

    # Same sample, and the run's data and epochs are still merged in after unpickling.
    assert sample(clone) == sample(define)
    assert sample(clone)["data"] == "phantom:small" and sample(clone)["epochs"] == 3


GOOD_HEADER = 'METRIC = "val_acc"\nMODE = "max"\nMAX_EPOCHS = 2\n'
BAD_SPACES = {
    "does_not_load": ("def define(trial)\n    return {}\n", "does not load"),
    "no_define": (GOOD_HEADER, "has no define(trial)"),
    "unknown_name": (
        GOOD_HEADER + "def define(trial):\n    trial.suggest_float('learning_rate', 1e-4, 1e-2)\n",
        "['learning_rate'], which TrialConfig does not know",
    ),
    "fails_when_sampled": (
        GOOD_HEADER + "def define(trial):\n"
        "    x = trial.suggest_int('batch_size', 1, 64)\n    return {'lr': 1 / (x - x)}\n",
        "define() failed on sample 0: ZeroDivisionError",
    ),
    "invalid_choice": (
        GOOD_HEADER + "def define(trial):\n"
        "    trial.suggest_categorical('model', ['simple_cnn', 'vgg16'])\n",
        "unknown model 'vgg16'",
    ),
    "bad_mode": (
        'METRIC = "val_acc"\nMODE = "maximize"\nMAX_EPOCHS = 2\ndef define(trial):\n'
        "    return {}\n",
        "MODE 'maximize' must be one of ['max', 'min']",
    ),
    "unknown_metric": (
        'METRIC = "accuracy"\nMODE = "max"\nMAX_EPOCHS = 2\ndef define(trial):\n    return {}\n',
        "METRIC 'accuracy' is not reported",
    ),
    "no_max_epochs": (
        'METRIC = "val_acc"\nMODE = "max"\ndef define(trial):\n    return {}\n',
        "must define MAX_EPOCHS",
    ),
    "suggests_epochs": (
        GOOD_HEADER + "def define(trial):\n    trial.suggest_int('epochs', 1, 3)\n",
        "which the run sets",
    ),
    "returns_a_list": (
        GOOD_HEADER + "def define(trial):\n    return ['lr']\n",
        "must return a dict of constants or None",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_SPACES))
def test_bad_space_file_is_refused_with_a_message_naming_it(tmp_path: Path, case: str) -> None:
    source, message = BAD_SPACES[case]
    path = tmp_path / f"{case}.py"
    path.write_text(textwrap.dedent(source))
    with pytest.raises(ValueError) as err:
        load_space(path, **RUN)
    # The message names the file and says what is wrong.
    assert str(path.resolve()) in str(err.value) or str(path) in str(err.value)
    assert message in str(err.value)


def test_unknown_suggest_name_lists_the_valid_names(tmp_path: Path) -> None:
    path = tmp_path / "typo.py"
    path.write_text(GOOD_HEADER + "def define(trial):\n    trial.suggest_float('l_r', 1e-4, 1)\n")
    with pytest.raises(ValueError) as err:
        load_space(path, **RUN)
    # Every TrialConfig field is offered as a valid choice.
    assert all(name in str(err.value) for name in field_names())


def test_missing_space_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load_space(tmp_path / "nope.py", **RUN)


def test_cpu_profile_keeps_only_the_spaces_cpu_choices() -> None:
    path = REPO / "spaces" / "transfer.py"
    cpu = load_space(path, cpu=True, **RUN)
    models = {c.model for c in sample_configs(cpu.define, "transfer", n=40, seed=2)}
    # Only the models the space marks as fast on a CPU; the full profile offers all five.
    assert models and models <= {"simple_cnn", "simple_cnn_10m", "resnet18"}
    full = load_space(path, **RUN)
    assert {c.model for c in sample_configs(full.define, "transfer", n=60, seed=2)} - models
    # The restriction survives the pickling Ray does for Tuner.restore.
    assert pickle.loads(pickle.dumps(cpu.define)).restrict == cpu.define.restrict


def test_shipped_spaces_are_found_by_name_and_paths_still_work(tmp_path, monkeypatch) -> None:
    # The spaces ship with the package; from a checkout they are spaces/*.py.
    assert sorted(builtin_spaces()) == [p.stem for p in SPACES]
    assert {"seed", "smoke", "transfer"} <= set(builtin_spaces())
    assert builtin_spaces()["smoke"].resolve() == (REPO / "spaces" / "smoke.py").resolve()
    monkeypatch.chdir(tmp_path)  # names do not depend on the working folder
    assert find_space("transfer") == builtin_spaces()["transfer"]
    mine = tmp_path / "transfer"  # a file of that name in the working folder is the user's
    mine.write_text("")
    assert find_space("transfer").resolve() == mine.resolve()
    assert find_space(str(REPO / "spaces" / "seed.py")) == REPO / "spaces" / "seed.py"
    with pytest.raises(ValueError, match="seed, smoke, transfer"):
        load_space(find_space("tranfser"))  # a typo: refused, naming the spaces
