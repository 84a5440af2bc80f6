"""Every flag and path is checked before work (search.checks via search.run): each bad case
exits with status 2 and a one-line message naming the flag, never a traceback, before Ray
starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from search.run import run

REPO = Path(__file__).resolve().parents[2]
SMOKE = str(REPO / "spaces" / "smoke.py")
AS_ROOT = os.geteuid() == 0  # root writes into read-only folders: those cases cannot fail


def _refused(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        run(["--space", SMOKE, *argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert "Traceback" not in err
    (line,) = err.strip().splitlines()  # one line: no usage block (that is for usage errors)
    return line


def _read_only(tmp_path: Path) -> Path:
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    return folder


def test_more_cpus_per_trial_than_any_node_is_refused_with_the_sizes(capsys, tmp_path) -> None:
    line = _refused(capsys, "--cpus-per-trial", "256", "--storage", str(tmp_path))
    cpus = len(os.sched_getaffinity(0))
    assert "--cpus-per-trial 256 exceeds every node's CPUs" in line
    assert f"nodes: {cpus} CPU + " in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_gpus_per_trial_without_a_gpu_is_refused_in_words(capsys, tmp_path) -> None:
    line = _refused(capsys, "--gpus-per-trial", "2", "--storage", str(tmp_path))
    assert "--gpus-per-trial 2: this machine has no GPU" in line


def test_storage_that_is_a_file_is_refused(capsys, tmp_path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    assert _refused(capsys, "--storage", str(f)).endswith(f"--storage {f} is a file, not a folder")
    line = _refused(capsys, "--storage", str(f / "below"))
    assert f"--storage {f / 'below'} cannot be written: Not a directory" in line


@pytest.mark.skipif(AS_ROOT, reason="root writes into read-only folders")
def test_read_only_storage_and_export_are_refused(capsys, tmp_path) -> None:
    folder = _read_only(tmp_path)
    line = _refused(capsys, "--storage", str(folder / "runs"))
    assert "cannot be written: Permission denied" in line
    line = _refused(capsys, "--storage", str(tmp_path), "--export", str(folder / "out"))
    assert f"--export's parent folder {folder} cannot be written" in line


def test_export_that_cannot_be_made_is_refused_before_the_sweep(capsys, tmp_path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    assert _refused(capsys, "--storage", str(tmp_path), "--export", str(f)).endswith(
        "is a file, not a folder"
    )
    line = _refused(capsys, "--storage", str(tmp_path), "--export", str(f / "sub" / "out"))
    assert "--export's parent folder" in line and "cannot be written" in line


def test_a_damaged_record_is_named(capsys, tmp_path) -> None:
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "cxr_tune.json").write_text("{half")
    line = _refused(capsys, "--storage", str(tmp_path), "--name", "exp", "--resume")
    assert "cxr_tune.json is not valid JSON" in line


def test_the_cli_prints_one_line_and_exits_2(tmp_path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    proc = subprocess.run(
        [sys.executable, "-m", "search.run", "--space", SMOKE, "--storage", str(f)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith(f"--storage {f} is a file, not a folder")


def _recorded(tmp_path: Path, **fields) -> Path:
    """An experiment folder Ray would try to restore (a record and a tuner.pkl)."""
    from trainables.experiment import ExperimentRecord, write_record

    exp = tmp_path / "exp"
    exp.mkdir()
    values = {
        "name": "exp",
        "metric": "val_loss",
        "mode": "min",
        "storage": str(tmp_path),
        "path": str(exp),
        "space": SMOKE,
        "max_epochs": 3,
        "num_samples": 3,
        "profile": "cpu",
        "overrides": {"data": "phantom:small", "seed": 0},
        "args": {"seed": 0},
        **fields,
    }
    write_record(exp, ExperimentRecord(**values))
    (exp / "tuner.pkl").write_bytes(b"")  # what Tuner.can_restore looks for; never loaded here
    return exp


def test_resume_refuses_another_space(capsys, tmp_path) -> None:
    _recorded(tmp_path)
    other = str(REPO / "spaces" / "seed.py")
    with pytest.raises(SystemExit) as exit_:
        run(["--space", other, "--storage", str(tmp_path), "--name", "exp", "--resume"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert f"--space {other} (the experiment has {SMOKE})" in err


def test_resume_refuses_fewer_samples(capsys, tmp_path) -> None:
    _recorded(tmp_path)
    line = _refused(
        capsys, "--storage", str(tmp_path), "--name", "exp", "--resume", "--num-samples", "2"
    )
    assert "--num-samples 2 is fewer than the experiment's 3" in line


def test_resume_refuses_a_space_whose_metric_changed(capsys, tmp_path) -> None:
    _recorded(tmp_path, metric="val_acc", mode="max")
    line = _refused(capsys, "--storage", str(tmp_path), "--name", "exp", "--resume")
    assert "now says metric val_loss (min), but the experiment ranks by val_acc (max)" in line


@pytest.mark.slow
def test_export_into_a_user_folder_is_refused_before_ray_leaving_its_files(tmp_path) -> None:
    mine = tmp_path / "my results"
    (mine / "sub").mkdir(parents=True)
    (mine / "notes.txt").write_text("keep me")
    (mine / "sub" / "table.csv").write_text("1,2\n")
    before = {p: p.read_bytes() for p in mine.rglob("*") if p.is_file()}
    storage = tmp_path / "runs"
    # The real command line in its own process; afterwards it says whether Ray ever started.
    code = (
        "import sys\nfrom search.run import main\ntry:\n    main(sys.argv[1:])\nfinally:\n"
        "    ray = sys.modules.get('ray')\n"
        "    print('ray started:', bool(ray and ray.is_initialized()))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "--space", SMOKE, "--storage", str(storage)]
        + ["--name", "exp", "--export", str(mine)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()  # one line: no usage block, no traceback
    # Names the folder and what is in it.
    assert f"--export {mine}: {mine} holds notes.txt, sub/ and no bundle" in line
    assert "ray started: False" in proc.stdout and "profile:" not in proc.stdout
    assert not (storage / "exp").exists()  # no experiment, no trial
    assert {p: p.read_bytes() for p in mine.rglob("*") if p.is_file()} == before


def test_export_into_the_working_folder_or_around_the_storage_is_refused(
    capsys, tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "draft.md").write_text("mine")
    line = _refused(capsys, "--storage", str(tmp_path / "runs"), "--export", ".")
    assert f"--export .: {tmp_path} holds draft.md" in line
    empty = tmp_path / "out"
    line = _refused(capsys, "--storage", str(empty / "runs"), "--export", str(empty))
    assert f"--export {empty} holds --storage {empty / 'runs'}" in line
