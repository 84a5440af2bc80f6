"""Parameter importance (analysis.plots.importance_table) from a sweep's own Optuna journal."""

from __future__ import annotations

from types import SimpleNamespace

import optuna
import pytest
from optuna.importance import FanovaImportanceEvaluator, get_param_importances
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from analysis.plots import importance_table


def _journal(tmp_path, complete: int, pruned: int):
    """A study in NAME/optuna_journal.log, as a sweep leaves it: lr matters, the rest is noise."""
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "optuna_journal.log")))
    study = optuna.create_study(study_name="exp", storage=storage, direction="minimize")
    study.sampler = optuna.samplers.RandomSampler(seed=0)
    for i in range(complete + pruned):
        trial = study.ask()
        lr = trial.suggest_float("lr", 1e-5, 1e-2, log=True)
        balance = trial.suggest_categorical("balance", ["original", "oversample"])
        value = abs(lr - 1e-3) * 100 + (0.001 if balance == "original" else 0.0)
        if i < complete:
            study.tell(trial, value)
        else:
            trial.report(value, step=1)
            study.tell(trial, state=TrialState.PRUNED)
    return study, SimpleNamespace(path=tmp_path, name="exp")


def test_importance_is_optunas_on_the_journal_as_optuna_dashboard_shows_it(tmp_path):
    study, exp = _journal(tmp_path, complete=12, pruned=4)
    table = importance_table(exp)
    expected = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0))
    got = table.set_index("parameter")["importance"].to_dict()
    assert got == pytest.approx(dict(expected))  # the same trials and distributions
    assert max(got, key=got.get) == "lr"  # the parameter that drives the value leads
    assert table.attrs["trials"].startswith("the study's 12 complete trials")


def test_with_fewer_than_two_complete_trials_pruned_ones_count_with_their_last_value(tmp_path):
    study, exp = _journal(tmp_path, complete=1, pruned=9)
    table = importance_table(exp)
    # The same fit on a study holding all ten as complete, each with its journal value.
    ten = optuna.create_study(direction="minimize")
    for t in study.trials:
        ten.add_trial(
            optuna.trial.create_trial(params=t.params, distributions=t.distributions, value=t.value)
        )
    expected = get_param_importances(ten, evaluator=FanovaImportanceEvaluator(seed=0))
    assert table.set_index("parameter")["importance"].to_dict() == pytest.approx(dict(expected))
    assert "1 complete and 9 pruned trials" in table.attrs["trials"]


def test_no_journal_or_too_few_scored_trials_is_a_reason_not_a_crash(tmp_path):
    with pytest.raises(ValueError, match="no Optuna journal"):
        importance_table(SimpleNamespace(path=tmp_path / "elsewhere", name="exp"))
    _, exp = _journal(tmp_path, complete=1, pruned=0)
    with pytest.raises(ValueError, match="needs 2 scored trials, got 1"):
        importance_table(exp)
