"""An interrupted sweep resumes: after Ctrl-C (SIGINT), SIGTERM and SIGKILL of the driver."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from search.watchdog import _psutil, descendants, still_running
from trainables.experiment import read_results, trial_dirs

REPO = Path(__file__).resolve().parents[2]
NUM_SAMPLES = 4
MAX_EPOCHS = 3  # spaces/smoke.py

pytestmark = pytest.mark.slow


def _finished_trials(exp: Path) -> dict[str, list[float]]:
    """Trial dir -> epochs of its result rows, for trials that reached MAX_EPOCHS."""
    out = {}
    for d in trial_dirs(exp) if exp.is_dir() else []:
        epochs = [r["epoch"] for r in read_results(d).rows]
        if epochs and max(epochs) >= MAX_EPOCHS:
            out[d.name] = epochs
    return out


def _result_rows(exp: Path) -> int:
    return sum(len(read_results(d).rows) for d in trial_dirs(exp))


def _started_after(exp: Path, finished: dict) -> bool:
    return any(read_results(d).rows for d in trial_dirs(exp) if d.name not in finished)


def _wait_for(condition, proc: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None and not condition():
        time.sleep(0.5)
    assert proc.poll() is None, "the sweep ended before it could be interrupted"
    assert condition(), f"condition not met within {seconds} s"


def test_interrupted_and_killed_sweep_resumes_without_rerunning_finished_trials(
    tmp_path: Path,
) -> None:
    storage = tmp_path / "runs"
    exp = storage / "resume"
    base = [
        sys.executable,
        "-m",
        "search.run",
        "--space",
        "spaces/smoke.py",
        "--storage",
        str(storage),
        "--name",
        "resume",
        "--wandb-mode",
        "disabled",
    ]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}

    # 1. Ctrl-C after the first epoch: a clean stop that says how to resume, and no export.
    # One trial at a time, so interruptions land between a finished trial and an unfinished one.
    first = subprocess.Popen(
        base + ["--num-samples", str(NUM_SAMPLES), "--max-concurrent", "1"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        _wait_for(
            lambda: any(read_results(d).rows for d in trial_dirs(exp)) if exp.is_dir() else False,
            first,
        )
        first.send_signal(signal.SIGINT)
        out, _ = first.communicate(timeout=240)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(timeout=60)
    assert first.returncode == 130, out[-3000:]
    assert "interrupted" in out and "--resume" in out and "nothing exported" in out
    assert not (exp / "export").exists()

    # 2. Resume, then SIGTERM (what Kubernetes, SLURM and `ray job stop` send) once the resumed
    # sweep has reported: the same clean stop as Ctrl-C, with exit status 143.
    rows = _result_rows(exp)
    (exp / "summary.json").unlink()  # the one this stop writes is checked below
    term = subprocess.Popen(
        base + ["--resume"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        _wait_for(lambda: _result_rows(exp) > rows, term)
        term.send_signal(signal.SIGTERM)
        out, _ = term.communicate(timeout=240)
    finally:
        if term.poll() is None:
            os.killpg(term.pid, signal.SIGKILL)
            term.wait(timeout=60)
    assert term.returncode == 143, out[-3000:]
    assert "SIGTERM" in out and "--resume" in out and "nothing exported" in out
    assert "Traceback" not in out
    assert json.loads((exp / "summary.json").read_text())["state"] == "interrupted"
    assert not (exp / "export").exists()

    # 3. Resume, then SIGKILL the driver's process group (driver and its Ray) mid-sweep.
    log = (tmp_path / "second.log").open("w")
    second = subprocess.Popen(
        base + ["--resume"],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait_for(
            lambda: bool(_finished_trials(exp)) and _started_after(exp, _finished_trials(exp)),
            second,
        )
        ours = descendants(_psutil(), second.pid)
    finally:
        os.killpg(second.pid, signal.SIGKILL)
        second.wait(timeout=60)
        log.close()
    # The watchdog ends the Ray processes the killed driver started within seconds; the resume
    # comes after that (one still writing into a trial folder would race it).
    deadline = time.monotonic() + 30
    while _alive_pids(_psutil(), ours) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _alive_pids(_psutil(), ours) == []
    before = _finished_trials(exp)

    # 4. Resume to the end.
    third = subprocess.run(
        base + ["--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=400
    )
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    assert "resuming" in third.stdout

    dirs = trial_dirs(exp)
    # The total is the requested trial count: the searcher kept its history.
    assert len(dirs) == NUM_SAMPLES
    summary = json.loads((exp / "summary.json").read_text())
    assert summary["state"] == "finished" and summary["trials"] == NUM_SAMPLES
    after = _finished_trials(exp)
    for name, epochs in before.items():
        # Finished before the kill: not re-run (same result rows, no second pass).
        assert after[name] == epochs
    for d in dirs:
        epochs = [r["epoch"] for r in read_results(d).rows]
        # Interrupted trials continued from a checkpoint, never from scratch after progress:
        # epochs never go back. (The epoch in flight when the driver stopped may be trained
        # and reported again: Ray's saved state can lag the last result row by one epoch.)
        assert epochs == sorted(epochs), (d.name, epochs)
        assert set(epochs) == set(range(1, int(max(epochs)) + 1)), (d.name, epochs)
    from search.optuna_pruned import journal_storage

    storage = journal_storage(exp / "optuna_journal.log")  # the search's record
    trials = optuna.load_study(study_name=exp.name, storage=storage).trials
    # The sweep's trials are its trial folders. A trial the resume found unknown to Ray's saved
    # table was removed (or moved to orphans/), though Optuna may have been told how it ended.
    ray_ids = {d.name.removeprefix("trial_") for d in dirs}
    ran = [t for t in trials if t.user_attrs.get("ray_trial_id") in ray_ids]
    # Optuna saw each trial of the sweep once, and every one reached a final state.
    assert len(ran) == NUM_SAMPLES and {t.state.name for t in ran} <= {"COMPLETE", "PRUNED"}
    assert {t.user_attrs["ray_trial_id"] for t in ran} == ray_ids
    # A trial the killed driver had asked for after Ray's last save is FAIL (abandoned) or was
    # told its end before the kill; none is left RUNNING.
    assert all(t.state.name in ("FAIL", "COMPLETE", "PRUNED") for t in trials if t not in ran)
    assert all("abandoned" in t.user_attrs for t in trials if t.state.name == "FAIL")
    assert (exp / "export" / "model.onnx").is_file()


def _alive_pids(psutil, processes: dict[int, float]) -> list[int]:
    return [proc.pid for proc in still_running(psutil, processes)]
