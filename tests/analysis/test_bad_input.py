"""Bad input to the report and to predict: each gets one clear message, and a partly broken
sweep is reported on what exists with what is missing listed."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file
from smoke_sweep import SMOKE_TRIALS

from analysis import predict, report
from analysis.load import load_experiment
from trainables.data import load_for_config
from trainables.experiment import ERRORED


def _link_copy(src: Path, dst: Path) -> Path:
    """A copy of a directory tree whose files are symlinks (checkpoints are tens of MB)."""
    shutil.copytree(src, dst, copy_function=os.symlink, ignore=shutil.ignore_patterns("wandb"))
    return dst


def _trial_dirs(exp: Path) -> list[Path]:
    return sorted(d for d in exp.iterdir() if (d / "result.json").exists())


def _mark_errored(exp: Path, trial_dir: Path, message: str) -> None:
    """What Ray leaves for a trial that raised: error.txt, and ERROR in its state file."""
    (trial_dir / "error.txt").write_text(f"Traceback (most recent call last):\n  ...\n{message}\n")
    for state_file in exp.glob("experiment_state-*.json"):
        state = json.loads(state_file.read_text())
        for entry in state["trial_data"]:
            trial = json.loads(entry[0])
            if trial["relative_logdir"] == trial_dir.name:
                trial["status"] = "ERROR"
                entry[0] = json.dumps(trial)
        state_file.unlink()  # a symlink into the original sweep: replace, do not write through
        state_file.write_text(json.dumps(state))


def test_missing_experiment_directory_is_refused(tmp_path, capsys):
    with pytest.raises(ValueError, match="does not exist"):
        load_experiment(tmp_path / "nope")
    # The CLI prints the same message and exits 2, no traceback.
    assert report.main([str(tmp_path / "nope")]) == 2
    assert f"experiment directory {tmp_path / 'nope'} does not exist" in capsys.readouterr().err


def test_directory_without_trials_is_refused_with_a_hint(tmp_path, smoke_experiment):
    with pytest.raises(ValueError, match="holds no trials"):
        load_experiment(tmp_path)
    # Pointing at the storage folder instead of the experiment names the experiment inside.
    with pytest.raises(ValueError, match=r"holds experiments \['smoke'\], pass one of them"):
        load_experiment(smoke_experiment.parent)


def test_trials_without_checkpoints_are_listed_and_the_report_refused(tmp_path, smoke_experiment):
    exp_dir = _link_copy(smoke_experiment, tmp_path / "smoke")
    for trial_dir in _trial_dirs(exp_dir):
        for ckpt in trial_dir.glob("checkpoint_*"):
            shutil.rmtree(ckpt)
    exp = load_experiment(exp_dir)
    # Every trial still loads (history, status), and each lack of a checkpoint is listed.
    assert len(exp.trials) == SMOKE_TRIALS and exp.usable() == []
    assert sum("has no checkpoint on disk" in m for m in exp.missing) == SMOKE_TRIALS
    with pytest.raises(ValueError, match="no trial with a usable checkpoint"):
        report.build_report(exp, tmp_path / "out", device="cpu")


def test_errored_and_checkpointless_trials_are_reported_as_missing(tmp_path, smoke_experiment):
    exp_dir = _link_copy(smoke_experiment, tmp_path / "smoke")
    first, second = _trial_dirs(exp_dir)[:2]
    _mark_errored(exp_dir, first, "RuntimeError: CUDA out of memory")
    for ckpt in second.glob("checkpoint_*"):
        shutil.rmtree(ckpt)
    # A torn last line (the driver died mid-write) must not hide the epochs before it.
    result = first / "result.json"
    lines = result.read_text()
    result.unlink()
    result.write_text(lines + '{"epoch": 9, "val_lo')
    exp = load_experiment(exp_dir)
    by_dir = {t.path.name: t for t in exp.trials}
    errored = by_dir[first.name]
    assert errored.status == ERRORED
    assert errored.error == "RuntimeError: CUDA out of memory"
    assert errored.epochs == len(lines.splitlines())
    # Both problems are listed in words, naming the trial.
    assert any(errored.trial_id in m and "errored" in m for m in exp.missing)
    assert any(by_dir[second.name].trial_id in m and "no checkpoint" in m for m in exp.missing)
    assert by_dir[second.name] not in exp.usable()


@pytest.mark.slow
def test_partial_sweep_is_reported_with_what_is_missing(tmp_path, smoke_experiment, single_thread):
    exp_dir = _link_copy(smoke_experiment, tmp_path / "smoke")
    trials = load_experiment(exp_dir).ranked()
    # Take away the best trial's checkpoints: the report falls back to the next one.
    for ckpt in trials[0].path.glob("checkpoint_*"):
        shutil.rmtree(ckpt)
    out = tmp_path / "out"
    rc = report.main([str(exp_dir), "--out", str(out), "--device", "cpu", "--top-k", "1"])
    assert rc == 0
    md = (out / "report.md").read_text()
    assert "What this report cannot cover" in md
    assert f"trial {trials[0].trial_id} has no checkpoint on disk" in md
    assert f"The best trial, `{trials[1].trial_id}`" in md


@pytest.fixture
def bundle_copy(tmp_path, smoke_experiment) -> Path:
    return _link_copy(smoke_experiment / "export", tmp_path / "bundle")


@pytest.fixture
def image(smoke_experiment) -> Path:
    cfg = load_experiment(smoke_experiment).best_trial().config
    return next((load_for_config(cfg).root / "test" / "VIRAL").iterdir())


def _predict_error(args: list[str], capsys) -> str:
    capsys.readouterr()
    assert predict.main(args) == 2
    return capsys.readouterr().err


def test_bundle_with_bad_json_is_refused(bundle_copy, image, capsys):
    (bundle_copy / "bundle.json").unlink()
    (bundle_copy / "bundle.json").write_text('{"format": "cxr-tune-bundle", ')
    err = _predict_error([str(bundle_copy), str(image)], capsys)
    assert "bundle.json is not valid JSON" in err


def test_bundle_without_weights_is_refused(bundle_copy, image, capsys):
    (bundle_copy / "model.safetensors").unlink()
    err = _predict_error([str(bundle_copy), str(image)], capsys)
    assert "has no weights file model.safetensors" in err


def test_bundle_with_weights_of_the_wrong_shape_is_refused(bundle_copy, image, capsys):
    weights = bundle_copy / "model.safetensors"
    state = load_file(str(weights))
    last = [k for k in state if k.endswith("weight") and state[k].ndim == 2][-1]
    state[last] = state[last][:2].clone()  # a 2-class head in a 3-class bundle
    weights.unlink()
    save_file(state, str(weights))
    err = _predict_error([str(bundle_copy), str(image)], capsys)
    assert "wrong shapes" in err and last in err


def test_unknown_tta_policy_lists_the_choices(bundle_copy, image, capsys):
    err = _predict_error([str(bundle_copy), str(image), "--tta", "tta3"], capsys)
    assert "unknown TTA policy 'tta3'; expected one of ['mirror', 'none', 'tta1', 'tta2']" in err


def _predict_skip(args: list[str], capsys) -> str:
    """A file predict cannot read is skipped with its reason (exit 1: some file failed)."""
    capsys.readouterr()
    assert predict.main(args) == 1
    out = capsys.readouterr()
    assert "0 file(s) predicted, 1 skipped" in out.err
    return out.out


def test_missing_or_corrupt_image_is_named(bundle_copy, tmp_path, capsys):
    out = _predict_skip([str(bundle_copy), str(tmp_path / "absent.png")], capsys)
    assert "absent.png" in out and "missing file" in out
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    out = _predict_skip([str(bundle_copy), str(junk)], capsys)
    assert "junk.png" in out
