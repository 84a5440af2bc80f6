"""Files the product does not write but resumes from (Ray's trial table, Optuna's journal),
torn by a write cut short: a resume refuses with one line naming the file and what to do."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from search.repair import resume_problem
from search.saved_state import saved_state
from trainables.experiment import OPTUNA_JOURNAL, read_ray_states

STATE = "experiment_state-2026-01-01_00-00-00.json"


def _ray_state(exp: Path, name: str = STATE) -> Path:
    trial = {"trial_id": "a_1", "relative_logdir": "trial_a_1", "status": "RUNNING"}
    path = exp / name
    path.write_text(json.dumps({"trial_data": [[json.dumps(trial), "{}"]], "runner_data": {}}))
    return path


def _journal(exp: Path) -> Path:
    """A real journal: a study with one finished and one running trial."""
    path = exp / OPTUNA_JOURNAL
    storage = JournalStorage(JournalFileBackend(str(path)))
    study = optuna.create_study(study_name="exp", storage=storage)
    study.tell(study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1.0)}), 0.5)
    study.ask().report(0.7, step=1)
    return path


def _load(journal: Path) -> optuna.Study:
    return optuna.load_study(
        study_name="exp", storage=JournalStorage(JournalFileBackend(str(journal)))
    )


def test_a_whole_state_and_journal_resume(tmp_path: Path) -> None:
    _ray_state(tmp_path)
    _journal(tmp_path)
    assert resume_problem(tmp_path) is None
    assert [s.trial_id for s in read_ray_states(tmp_path)] == ["a_1"]


def test_a_torn_ray_state_is_named_by_every_reader(tmp_path: Path) -> None:
    _ray_state(tmp_path)
    _journal(tmp_path)
    whole = _ray_state(tmp_path, "experiment_state-2027-01-01_00-00-00.json").read_bytes()
    torn = tmp_path / "experiment_state-2027-01-01_00-00-00.json"
    torn.write_bytes(whole[: len(whole) // 2])  # the newest, cut mid-write
    problem = resume_problem(tmp_path)
    assert problem is not None and "\n" not in problem
    assert problem.startswith(f"{torn}: Ray's saved experiment state cannot be read")
    assert "move it aside" in problem and "new --name" in problem
    for read in (lambda: saved_state(str(tmp_path)), lambda: read_ray_states(tmp_path)):
        with pytest.raises(ValueError, match=f"^{re.escape(str(torn))}: "):
            read()
    # What the line says to do works: moved aside, the older state is whole.
    torn.rename(tmp_path / "torn.json.bak")
    assert resume_problem(tmp_path) is None
    # A file that is JSON but not Ray's trial table is refused the same way.
    (tmp_path / STATE).write_text(json.dumps({"something": "else"}))
    assert resume_problem(tmp_path).startswith(f"{tmp_path / STATE}: Ray's saved")


def test_a_journal_cut_mid_record_is_named_with_the_offset_to_cut_at(tmp_path: Path) -> None:
    _ray_state(tmp_path)
    journal = _journal(tmp_path)
    whole = journal.read_bytes()
    last_end = whole.rindex(b"\n", 0, len(whole) - 1) + 1  # where the last record starts
    journal.write_bytes(whole[: last_end + 10])  # the last record cut after 10 bytes
    problem = resume_problem(tmp_path)
    assert problem is not None and "\n" not in problem
    assert problem.startswith(f"{journal}: its last record is cut short after byte {last_end}")
    # The truncate the line names leaves the journal Optuna reads, whole and appendable.
    command = re.search(r"`(truncate [^`]+)`", problem).group(1)
    subprocess.run(command.split(), check=True)
    assert journal.read_bytes() == whole[:last_end]
    assert resume_problem(tmp_path) is None
    study = _load(journal)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "RUNNING"]
    study.tell(study.trials[1].number, 0.4)
    assert [t.state.name for t in _load(journal).trials] == ["COMPLETE", "COMPLETE"]


def test_a_journal_with_a_garbled_line_is_refused(tmp_path: Path) -> None:
    _ray_state(tmp_path)
    journal = _journal(tmp_path)
    lines = journal.read_bytes().split(b"\n")
    lines[1] = lines[1][:5]
    journal.write_bytes(b"\n".join(lines))
    problem = resume_problem(tmp_path)
    assert problem == (
        f"{journal}: line 2 is not an Optuna journal record; the study cannot be read: restore "
        f"the file from a copy, or start a new --name"
    )


def test_a_torn_newest_searcher_save_is_set_aside_and_the_one_before_is_used(tmp_path):
    import cloudpickle

    from search.optuna_pruned import SEARCHER_GLOB, PrunedOptunaSearch, read_state
    from search.saved_state import SEARCH_GEN_GLOB, set_aside_torn

    # Saves cut short (a full disk, a crash): the newest search-generator file is empty and the
    # newest searcher file cut short; the older ones are whole.
    whole = cloudpickle.dumps({"counter": 3})
    searcher = PrunedOptunaSearch(
        None, "val", "max", sampler=optuna.samplers.RandomSampler(0), max_epochs=2, study_name="x"
    )
    searcher.suggest("a")
    state = searcher.state_bytes()
    (tmp_path / "search_gen_state-2026-01-01_00-00-01.json").write_bytes(whole)
    (tmp_path / "search_gen_state-2026-01-01_00-00-02.json").write_bytes(b"")
    (tmp_path / "searcher-state-2026-01-01_00-00-01.pkl").write_bytes(state)
    (tmp_path / "searcher-state-2026-01-01_00-00-02.pkl").write_bytes(state[: len(state) // 2])
    notes = set_aside_torn(tmp_path)
    assert len(notes) == 2 and all("is used instead" in n for n in notes)
    # What Ray restores from (the newest by name in each glob) now loads.
    for pattern in (SEARCH_GEN_GLOB, SEARCHER_GLOB):
        newest = sorted(tmp_path.glob(pattern))[-1]
        assert newest.name.endswith("00-00-01" + newest.suffix)
    assert (
        cloudpickle.loads(sorted(tmp_path.glob(SEARCH_GEN_GLOB))[-1].read_bytes())["counter"] == 3
    )
    assert read_state(sorted(tmp_path.glob(SEARCHER_GLOB))[-1].read_bytes())["trials"] == {"a": 0}
    assert len(list(tmp_path.glob("*.torn"))) == 2  # kept for inspection, out of Ray's way
    assert set_aside_torn(tmp_path) == []  # nothing torn is left
    with pytest.raises(ValueError, match=r"^x.pkl: not a cxr-tune searcher state .* new --name$"):
        read_state(state[:10], "x.pkl")
