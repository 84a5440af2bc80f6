"""search.plan: what a new experiment's record says before Ray starts (flags > profile > space)."""

from __future__ import annotations

from pathlib import Path

import pytest

from search.cli import build_parser
from search.plan import data_changes, new_experiment

SPACE = """
METRIC = "val_loss"
MODE = "min"
MAX_EPOCHS = {epochs}
NUM_SAMPLES = {samples}


def define(trial):
    trial.suggest_float("lr", 1e-4, 1e-2, log=True)
    return {{"model": "simple_cnn_10m", "batch_size": 8}}
"""


def plan(tmp_path: Path, samples: int, epochs: int, *flags: str):
    space = tmp_path / f"space_{samples}_{epochs}.py"
    space.write_text(SPACE.format(samples=samples, epochs=epochs))
    parser = build_parser()
    args = parser.parse_args(["--space", str(space), "--storage", str(tmp_path), *flags])
    record, _ = new_experiment(parser, args, str(tmp_path), "exp", gpus=0, card_bytes=0)
    return record


@pytest.mark.parametrize(
    ("samples", "epochs", "flags", "expected"),
    [
        (3, 2, (), (3, 2)),  # a space asking for less than the CPU profile's caps gets it
        (48, 30, (), (10, 10)),  # the CPU profile caps trials and epochs at 10
        (48, 30, ("--num-samples", "25"), (25, 10)),  # the flag beats the profile's cap
        (48, 30, ("--profile", "full"), (48, 30)),  # the full profile runs the space as written
    ],
)
def test_trials_and_epochs_follow_flags_then_profile_caps_then_the_space(
    tmp_path, capsys, samples, epochs, flags, expected
) -> None:
    record = plan(tmp_path, samples, epochs, *flags)
    assert (record.num_samples, record.max_epochs) == expected
    out = capsys.readouterr().out
    assert out.startswith(f"profile: {record.profile}")
    assert f"experiment {record.path}: {expected[0]} trials" in out


def test_data_changes_names_other_classes_and_other_counts() -> None:
    from trainables.data import DataReport

    saved = [{"classes": ["A", "B"], "counts": {"train": {"A": 10, "B": 8}, "val": {"A": 2}}}]

    def now(classes, counts):
        return [DataReport(root="r", layout="image-folder", classes=classes, counts=counts)]

    same = now(["A", "B"], {"train": {"A": 10, "B": 8}, "val": {"A": 2}})
    assert data_changes(saved, same) == ""
    fewer = now(["A", "B"], {"train": {"A": 9, "B": 8}, "val": {"A": 2}})
    assert data_changes(saved, fewer) == "train A 10 -> 9 images"
    other = now(["A", "C"], {"train": {"A": 10, "C": 8}})
    assert data_changes(saved, other) == "classes ['A', 'B'] -> ['A', 'C']"
    assert data_changes([], same) == ""  # an experiment saved before data reports existed
    # Same counts, other files (or labels): the files' hash tells them apart.
    hashed = [{**saved[0], "files_sha256": "a" * 64}]
    same[0].files_sha256 = "a" * 64
    assert data_changes(hashed, same) == ""
    same[0].files_sha256 = "b" * 64
    assert data_changes(hashed, same) == (
        "the same counts, but other train or validation files or labels"
    )
    assert data_changes(saved, same) == ""  # saved before the hash existed: counts only


def test_a_data_folder_the_user_cannot_list_is_a_one_line_refusal(monkeypatch, capsys) -> None:
    """Root reads every folder, so the PermissionError a user gets from listing an unreadable
    one is raised here the way os.scandir raises it."""
    import search.preflight
    from search.plan import run_preflight

    def unreadable(space):
        raise PermissionError(13, "Permission denied", "/data/train/NORMAL")

    monkeypatch.setattr(search.preflight, "preflight", unreadable)
    with pytest.raises(SystemExit) as exit_:
        run_preflight(build_parser(), space=None)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err == "error: the data cannot be read: Permission denied: /data/train/NORMAL\n"
