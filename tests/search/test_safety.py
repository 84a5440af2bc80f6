"""Experiment safety with real sweeps (issue 11): one writer per experiment, exact resume of a
killed, copied or moved experiment, no secret on disk, nothing of the driver's left running.

Each test runs `python -m search.run` over spaces/smoke.py (32 px, 3 epochs, 4 batches each).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from search.watchdog import _psutil, descendants, still_running
from trainables.experiment import (
    LOCK_FILE,
    OPTUNA_JOURNAL,
    RAY_STATE_GLOB,
    read_record,
    read_results,
    trial_dirs,
)

REPO = Path(__file__).resolve().parents[2]
KEY = "cxrtune-fake-key-1234567890abcdef"  # a recognisable fake W&B API key
STATE_GLOBS = (RAY_STATE_GLOB, "searcher-state-*.pkl", "search_gen_state-*.json")

pytestmark = pytest.mark.slow


def _command(storage: Path, name: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "search.run",
        "--space",
        "spaces/smoke.py",
        "--storage",
        str(storage),
        "--name",
        name,
        *extra,
    ]


def _env(tmp_path: Path) -> dict[str, str]:
    wandb_home = tmp_path / "wandb-home"
    return {
        **os.environ,
        "WANDB_API_KEY": KEY,
        "WANDB_CACHE_DIR": str(wandb_home / "cache"),
        "WANDB_CONFIG_DIR": str(wandb_home / "config"),
        "WANDB_DATA_DIR": str(wandb_home / "data"),
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "disabled",
    }


def _wait(condition, proc: subprocess.Popen, seconds: float = 300, step: float = 0.1) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert proc.poll() is None, "the sweep ended before the point the test waits for"
        assert time.monotonic() < deadline, f"not reached within {seconds} s"
        time.sleep(step)


def _hits(roots: list[Path], secret: str) -> list[str]:
    """Regular files under `roots` whose bytes contain `secret`."""
    found = []
    for root in roots:
        if not root.exists():
            continue
        for path in root.rglob("*"):
            try:
                if (
                    path.is_file()
                    and not path.is_symlink()
                    and secret.encode() in path.read_bytes()
                ):
                    found.append(str(path))
            except OSError:  # a file Ray removed while we walked
                pass
    return found


def _ray_folder(psutil, driver_pid: int) -> Path:
    """The private folder holding the driver's Ray temp dir (its watchdog's last argument)."""
    for child in psutil.Process(driver_pid).children():
        cmd = child.cmdline()
        if "search.watchdog" in cmd:
            return Path(cmd[-1])
    raise AssertionError("the driver started no watchdog")


def _trial_id(exp: Path, order: int) -> str | None:
    """The id of the `order`-th trial (0-based) Ray saved in its newest trial table."""
    states = sorted(exp.glob(RAY_STATE_GLOB))
    try:
        trials = json.loads(states[-1].read_text())["trial_data"]
        return json.loads(trials[order][0])["trial_id"]
    except (IndexError, KeyError, json.JSONDecodeError, OSError):
        return None


def _done(trial_dir: Path) -> bool:
    rows = read_results(trial_dir).rows
    return bool(rows) and bool(rows[-1].get("done"))


def test_sigkill_with_a_stale_snapshot_resumes_exactly_leaving_no_secret_and_no_process(
    tmp_path: Path,
) -> None:
    """Killed after trial 1 finished and trial 2 started, with Ray's saved state from before
    trial 1 finished (the state is saved every second; the test keeps an older save, the
    state a kill lands on when it falls between a result and the next save). The experiment
    is then moved, and resumed from where it is now."""
    psutil = _psutil()
    storage, env = tmp_path / "runs", _env(tmp_path)
    exp = storage / "kill"
    # Grace 3 = every epoch: no trial is stopped after one epoch (a fraction of a second here),
    # so the kill below lands while trial 2 trains.
    args = ("--num-samples", "3", "--max-concurrent", "1", "--wandb-mode", "offline")
    args += ("--grace-period", "3")
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(
        _command(storage, "kill", *args), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    saved = tmp_path / "saved-state"
    try:
        # Keep the newest save that lists trial 1 while its folder is not yet done.
        def keep_state_until_first_is_done() -> bool:
            first_id = _trial_id(exp, 0)
            if first_id is None:
                return False
            if _done(exp / f"trial_{first_id}"):
                return saved.is_dir()
            shutil.rmtree(saved, ignore_errors=True)
            saved.mkdir()
            for pattern in STATE_GLOBS:
                for f in exp.glob(pattern):
                    shutil.copy2(f, saved / f.name)
            return False

        _wait(keep_state_until_first_is_done, first, step=0.05)
        first_id = _trial_id(exp, 0)
        ray_folder = _ray_folder(psutil, first.pid)
        ours = descendants(psutil, first.pid)
        assert ray_folder.is_dir() and ray_folder.stat().st_mode & 0o077 == 0  # 0700
        during = _hits([storage, tmp_path / "wandb-home", ray_folder], KEY)
        _wait(lambda: len(trial_dirs(exp)) >= 2, first, step=0.02)  # trial 2 has started
        first.send_signal(signal.SIGKILL)  # the driver only: what it started must end itself
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
        log.close()
    killed_at = time.monotonic()
    assert during == []

    def cleaned_up() -> bool:
        return not _alive_pids(psutil, ours) and not ray_folder.exists()

    while time.monotonic() - killed_at < 10 and not cleaned_up():  # seconds
        time.sleep(0.2)
    # Within a few seconds nothing the driver started is alive, and Ray's session logs are gone.
    assert _alive_pids(psutil, ours) == [], "processes the driver started outlived it by 10 s"
    assert not ray_folder.exists()
    assert _hits([storage, tmp_path / "wandb-home"], KEY) == []

    # Put back the older save, move the experiment, and resume it where it is now.
    for pattern in STATE_GLOBS:
        for f in exp.glob(pattern):
            f.unlink()
    for f in saved.iterdir():
        shutil.copy2(f, exp / f.name)
    first_rows = read_results(exp / f"trial_{first_id}").rows
    second_dirs = [d.name for d in trial_dirs(exp) if d.name != f"trial_{first_id}"]
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.move(str(exp), str(moved / "kill"))
    exp = moved / "kill"
    resumed = subprocess.run(
        _command(moved, "kill", "--resume"),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, out[-4000:]
    assert f"resumes where it is now, {exp}" in out
    assert f"trial {first_id} finished (epoch 3) after Ray's last save" in out
    for name in second_dirs:
        assert f"{name} started after Ray's last save" in out and "removed" in out

    dirs = trial_dirs(exp)
    assert len(dirs) == 3 and not (exp / "orphans").exists()
    assert not any((exp / name).exists() for name in second_dirs)
    # Trial 1 was not trained again: its rows are the ones written before the kill.
    assert read_results(exp / f"trial_{first_id}").rows == first_rows
    for d in dirs:
        epochs = [r["epoch"] for r in read_results(d).rows]
        assert epochs == list(range(1, len(epochs) + 1)), (d.name, epochs)
    summary = json.loads((exp / "summary.json").read_text())
    assert summary["state"] == "finished" and summary["trials"] == 3
    # The study, read from the journal where the experiment is now (the old folder is gone):
    # each Ray trial's end as Optuna saw it, and the trial asked just before the kill (its
    # folder removed above) told FAIL as abandoned rather than left RUNNING.
    assert not (storage / "kill").exists()
    study = _study(exp, "kill")
    ran = {
        t.user_attrs["ray_trial_id"]: t.state.name
        for t in study.trials
        if "ray_trial_id" in t.user_attrs
    }
    assert ran == {
        d.name.removeprefix("trial_"): "COMPLETE" if len(read_results(d).rows) == 3 else "PRUNED"
        for d in dirs
    }
    abandoned = [t for t in study.trials if "ray_trial_id" not in t.user_attrs]
    assert [t.state.name for t in abandoned] == ["FAIL"] * len(second_dirs)
    assert all("abandoned" in t.user_attrs for t in abandoned)
    assert read_record(exp).path == str(exp)
    assert (exp / LOCK_FILE).read_text() == ""  # released
    assert _hits([moved, tmp_path / "wandb-home"], KEY) == []


def _refusal(command: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """`command` (a `_command`) run in this process, refused with status 2 before Ray starts
    (no traceback): the line it printed."""
    from search.run import run

    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        run(command[3:])
    assert refused.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    return line


def test_second_run_of_a_live_experiment_is_refused_and_a_copy_resumes_in_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage, env = tmp_path / "runs", _env(tmp_path)
    exp = storage / "busy"
    base = ("--max-concurrent", "1", "--wandb-mode", "disabled", "--no-export")
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(
        _command(storage, "busy", "--num-samples", "2", *base),
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait(lambda: (exp / LOCK_FILE).is_file() and (exp / LOCK_FILE).read_text(), first)
        second = _refusal(_command(storage, "busy", "--num-samples", "2", *base), capsys)
        assert first.poll() is None  # refused while the first one runs
        first.wait(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
        log.close()
    assert f"is in use by pid {first.pid} on host {socket.gethostname()}" in second
    first_out = (tmp_path / "first.log").read_text()
    assert first.returncode == 0, first_out[-3000:]
    assert "finished (2/2 trials" in first_out
    assert len(trial_dirs(exp)) == 2

    # A copy resumes in place (more trials applied there); the original is left untouched.
    before = {p: p.stat().st_mtime_ns for p in exp.rglob("*")}
    copy = tmp_path / "copy"
    shutil.copytree(storage, copy)
    refused = _refusal(_command(copy, "busy", "--resume", "--seed", "7"), capsys)
    assert "--seed 7 (the experiment has 0)" in refused
    # A copy made without the Optuna journal is refused up front, naming the missing file.
    bare = tmp_path / "bare"
    shutil.copytree(storage, bare)
    (bare / "busy" / OPTUNA_JOURNAL).unlink()
    no_journal = _refusal(_command(bare, "busy", "--resume"), capsys)
    missing = f"{bare / 'busy' / OPTUNA_JOURNAL}: the experiment's Optuna study journal is missing"
    assert missing in no_journal
    resumed = subprocess.run(
        _command(copy, "busy", "--resume", "--num-samples", "3", *base),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    assert "the search now runs 3 trials (was 2)" in resumed.stdout
    assert len(trial_dirs(copy / "busy")) == 3
    assert read_record(copy / "busy").path == str(copy / "busy")
    assert {p: p.stat().st_mtime_ns for p in exp.rglob("*")} == before
    # Each study is in its own folder's journal: the copy's has the third trial, the original's not.
    assert len(_study(copy / "busy", "busy").trials) == 3
    assert len(_study(exp, "busy").trials) == 2


def _study(experiment: Path, name: str) -> optuna.Study:
    journal = JournalFileBackend(str(experiment / OPTUNA_JOURNAL))
    return optuna.load_study(study_name=name, storage=JournalStorage(journal))


def _alive_pids(psutil, processes: dict[int, float]) -> list[int]:
    return [proc.pid for proc in still_running(psutil, processes)]
