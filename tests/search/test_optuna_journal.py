"""The Optuna study on disk (search.optuna_pruned): JournalStorage states and values, and a
restore of Ray's pickled searcher that neither duplicates nor forks the journal."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from search.optuna_pruned import PrunedOptunaSearch, journal_storage

MAX_EPOCHS = 3


def define(trial) -> dict:
    trial.suggest_float("lr", 1e-4, 1e-2, log=True)
    return {"batch_size": 8}


def searcher(path, points: list | None = None) -> PrunedOptunaSearch:
    return PrunedOptunaSearch(
        space=define,
        points_to_evaluate=points,
        metric="val_loss",
        mode="min",
        sampler=optuna.samplers.RandomSampler(seed=0),
        max_epochs=MAX_EPOCHS,
        study_name="exp",
        journal_file=str(path),
    )


def report(s: PrunedOptunaSearch, trial_id: str, epoch: int, value: float) -> dict:
    result = {"epoch": epoch, "training_iteration": epoch, "val_loss": value}
    s.on_trial_result(trial_id, result)
    return result


def load(path) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name="exp", storage=journal_storage(path))
    return sorted(study.trials, key=lambda t: t.number)


@pytest.fixture
def journal(tmp_path):
    return tmp_path / "optuna_journal.log"


def test_states_values_and_intermediate_values_reach_the_journal(journal) -> None:
    s = searcher(journal)
    for trial_id in ("a", "b", "c"):
        s.suggest(trial_id)
    for epoch, value in ((1, 0.9), (2, 0.4)):
        report(s, "a", epoch, value)
    s.on_trial_complete("a", report(s, "a", 3, 0.6))  # the last epoch is worse than epoch 2
    s.on_trial_complete("b", report(s, "b", 1, 1.2))  # ASHA stopped it after epoch 1
    s.on_trial_complete("c", {"epoch": 1, "val_loss": 0.8}, error=True)
    a, b, c = load(journal)
    # COMPLETE holds the best epoch's value, the one export and report rank by (not 0.6).
    assert a.state == TrialState.COMPLETE and a.value == pytest.approx(0.4)
    assert a.intermediate_values == {1: 0.9, 2: 0.4, 3: 0.6}
    assert a.user_attrs == {"ray_trial_id": "a", "epochs": 3, "best_epoch": 2, "best_value": 0.4}
    assert b.state == TrialState.PRUNED and b.intermediate_values == {1: 1.2}
    assert c.state == TrialState.FAIL and c.value is None


def test_restore_reconciles_the_journal_instead_of_forking_it(journal, tmp_path) -> None:
    s = searcher(journal)
    for trial_id in ("a", "b"):
        s.suggest(trial_id)
    report(s, "a", 1, 0.9)
    report(s, "a", 2, 0.5)
    state = tmp_path / "searcher-state.pkl"
    s.save(str(state))  # Ray saves the searcher with its experiment state
    # After the save, before the driver dies: a finishes, b reports, d is asked but never saved.
    s.on_trial_complete("a", report(s, "a", 3, 0.7))
    report(s, "b", 1, 1.1)
    s.suggest("d")

    restored = searcher(journal)  # what Tuner.restore unpickles, then restore_from_dir
    restored.restore(str(state))
    frozen = {t.user_attrs.get("ray_trial_id"): t for t in load(journal)}
    assert len(load(journal)) == 3  # a, b, d: the restore created no trial and no study
    # d was asked after the save: Ray never saw it and will not run it, so it is not left RUNNING.
    orphan = [t for t in load(journal) if t.number == 2][0]
    assert orphan.state == TrialState.FAIL and "abandoned" in orphan.user_attrs

    # Ray resumes a and b from their checkpoints and reports their epochs again.
    restored.on_trial_result("a", {"epoch": 3, "val_loss": 0.7})
    restored.on_trial_complete("a", {"epoch": 3, "val_loss": 0.7})
    report(restored, "b", 1, 1.1)
    report(restored, "b", 2, 0.3)
    restored.on_trial_complete("b", report(restored, "b", 3, 0.35))
    after = {t.number: t for t in load(journal)}
    # a stays as it was told once, with its best epoch's value.
    assert after[0].state == TrialState.COMPLETE and after[0].value == pytest.approx(0.5)
    assert after[0].intermediate_values == {1: 0.9, 2: 0.5, 3: 0.7}
    # b continues in the same Optuna trial, each epoch once, and completes with its best.
    assert after[1].intermediate_values == {1: 1.1, 2: 0.3, 3: 0.35}
    assert after[1].state == TrialState.COMPLETE and after[1].value == pytest.approx(0.3)
    assert frozen["a"].number == 0
    # The next suggestion is a new trial, numbered after every trial the journal holds.
    restored.suggest("e")
    assert [t.number for t in load(journal)] == [0, 1, 2, 3]


def test_a_seed_point_asked_after_the_last_save_is_enqueued_again(journal, tmp_path) -> None:
    s = searcher(journal, points=[{"lr": 0.001}])
    state = tmp_path / "searcher-state.pkl"
    s.save(str(state))
    assert s.suggest("a")["lr"] == 0.001  # popped from the queue after the save
    restored = searcher(journal)  # as unpickled from tuner.pkl: no second enqueue
    restored.restore(str(state))
    # The pickled study still had the point waiting; the journal gets it back the same way.
    assert restored.suggest("a")["lr"] == 0.001
    states = [t.state for t in load(journal)]
    assert states == [TrialState.FAIL, TrialState.RUNNING]


def _saved_experiment(folder) -> PrunedOptunaSearch:
    """An experiment folder holding a journal and Ray's saved searcher (its file name as Ray's
    `save_to_dir` writes it), with trial a finished and trial b reported once."""
    folder.mkdir()
    s = searcher(folder / "optuna_journal.log")
    for trial_id in ("a", "b"):
        s.suggest(trial_id)
    s.on_trial_complete("a", report(s, "a", 3, 0.4))
    report(s, "b", 1, 0.9)
    s.save(str(folder / "searcher-state-2026-12-01_00-00-00.pkl"))
    return s


def _restore(folder) -> PrunedOptunaSearch:
    restored = searcher(folder / "optuna_journal.log")
    restored.restore(str(next(folder.glob("searcher-state-*.pkl"))))
    return restored


def test_a_copied_experiment_resumes_on_its_own_journal(tmp_path) -> None:
    import shutil

    original, copy = tmp_path / "exp", tmp_path / "copy"
    _saved_experiment(original)
    shutil.copytree(original, copy)
    before = (original / "optuna_journal.log").read_bytes()
    # A killed driver's journal lock travelled with the copy: Optuna releases it after its
    # grace period (JOURNAL_LOCK_GRACE_S), with nothing removed by hand.
    lock = copy / "optuna_journal.log.lock"
    lock.symlink_to(original / "optuna_journal.log")

    from search.repair import rebase_journal

    notes = rebase_journal(copy)  # the saved state named the original's journal
    assert notes == [
        f"the Optuna study is read from {copy / 'optuna_journal.log'}, not "
        f"{original / 'optuna_journal.log'}"
    ]
    assert rebase_journal(copy) == []  # done once
    restored = _restore(copy)
    assert restored.journal_file == str(copy / "optuna_journal.log")
    restored.on_trial_complete("b", report(restored, "b", 2, 0.3))
    restored.suggest("c")
    assert not lock.is_symlink()
    # The copy's study carries on (b finished, c asked); the original's journal is untouched.
    states = [t.state for t in load(copy / "optuna_journal.log")]
    assert states == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING]
    assert (original / "optuna_journal.log").read_bytes() == before


def test_a_moved_experiment_without_its_journal_is_refused_naming_the_file(tmp_path) -> None:
    from search.optuna_pruned import missing_journal
    from search.repair import rebase_journal

    original, moved = tmp_path / "exp", tmp_path / "moved"
    _saved_experiment(original)
    original.rename(moved)
    assert missing_journal(moved) is None
    (moved / "optuna_journal.log").unlink()
    assert missing_journal(moved) == (
        f"{moved / 'optuna_journal.log'}: the experiment's Optuna study journal is missing; copy "
        f"optuna_journal.log along with the experiment folder, or start a new --name"
    )
    with pytest.raises(FileNotFoundError, match="journal is missing"):
        rebase_journal(moved)  # never re-pointed at a journal that is not there


def test_trials_rays_saved_table_does_not_list_are_abandoned_not_left_running(tmp_path) -> None:
    """The searcher was saved after it asked for b, the trial table before: Ray will never run
    b, so the resume tells Optuna it failed (abandoned) and forgets it; a is left to run."""
    import json

    from search.optuna_pruned import read_state
    from search.repair import abandon_unlisted_trials

    folder = tmp_path / "exp"
    folder.mkdir()
    s = searcher(folder / "optuna_journal.log")
    for trial_id in ("a", "b"):
        s.suggest(trial_id)
    s.save(str(folder / "searcher-state-2026-12-01_00-00-00.pkl"))
    table = {"trial_data": [[json.dumps({"trial_id": "a", "status": "RUNNING"}), "{}"]]}
    (folder / "experiment_state-2026-12-01_00-00-00.json").write_text(json.dumps(table))

    notes = abandon_unlisted_trials(str(folder))
    assert notes and "trial(s) b were asked for after Ray's last saved trial table" in notes[0]
    a, b = load(folder / "optuna_journal.log")
    assert a.state == TrialState.RUNNING and "abandoned" not in a.user_attrs
    assert b.state == TrialState.FAIL and "abandoned" in b.user_attrs
    saved = read_state(next(folder.glob("searcher-state-*.pkl")).read_bytes())
    assert saved["trials"] == {"a": 0}  # the Ray-facing state: Ray ids to Optuna numbers
    assert abandon_unlisted_trials(str(folder)) == []  # done once


def test_the_sampler_resumes_its_random_state_not_its_seed(tmp_path) -> None:
    """A restored sweep's random start-up goes on where it was, instead of asking again for
    the values it began with (the sampler is saved, as Optuna's FAQ says)."""
    journal = tmp_path / "optuna_journal.log"
    s = searcher(journal)
    first = s.suggest("a")["lr"]
    s.save(str(tmp_path / "searcher-state-1.pkl"))
    ahead = s.suggest("b")["lr"]
    restored = searcher(journal)  # as unpickled from tuner.pkl: the sampler as first seeded
    restored.restore(str(tmp_path / "searcher-state-1.pkl"))
    again = restored.suggest("b2")["lr"]
    assert again == pytest.approx(ahead) and again != pytest.approx(first)
