"""A sweep whose storage fills up stops with one line naming the storage and the bytes it needs,
leaves nothing torn, and `--resume` continues it exactly once space is freed (a small tmpfs,
grown): first a disk too small for one checkpoint (a trial fails writing: the sweep stops at
once, without Ray's retries and tracebacks), then one that fills up during the sweep (it stops
before that). A copy whose Optuna journal is cut mid-record is refused naming the journal."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from search.repair import resume_problem
from search.run import run
from trainables.experiment import OPTUNA_JOURNAL, TRIAL_DIR_PREFIX, read_results, trial_dirs

REPO = Path(__file__).resolve().parents[2]
NAME = "full"
TRIALS = 2
# spaces/smoke.py: a checkpoint is about 21 MiB, one per epoch, and Ray keeps a trial's best two
# and its latest; a running sweep keeps 8 MiB (search.disk.RESERVE_BYTES) of its storage. 24 MiB
# leaves no room for the first checkpoint; 80 MiB holds two or three, not the sweep's six.
TOO_SMALL, SMALL, LARGE = "24m", "80m", "400m"

pytestmark = pytest.mark.slow


def _sweep_args(storage: Path, *extra: str) -> list[str]:
    space = str(REPO / "spaces" / "smoke.py")
    return ["--space", space, "--storage", str(storage), "--name", NAME, "--wandb-mode", "disabled",
            *extra]  # fmt: skip


def _sweep(storage: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "search.run", *_sweep_args(storage, *extra)]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture
def small_disk(tmp_path: Path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TOO_SMALL}", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _remount(mnt: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mnt)], check=True)


def _stopped(proc: subprocess.CompletedProcess, exp: Path, start: str, says: str) -> None:
    """The sweep stopped for want of space: one line saying so, a whole saved state."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-4000:]
    assert "Traceback" not in out, out[-4000:]
    [line] = [x for x in proc.stderr.splitlines() if x.startswith(f"storage {exp} ")]
    assert line.startswith(start) and says in line and line.endswith("then resume"), line
    print(line)
    assert "--resume" in proc.stdout and "nothing exported" in proc.stdout
    assert json.loads((exp / "summary.json").read_text())["state"] == "interrupted"
    assert resume_problem(exp) is None  # nothing it resumes from is torn


def _rows(exp: Path) -> dict[str, list[float]]:
    return {d.name: [r["epoch"] for r in read_results(d).rows] for d in trial_dirs(exp)}


def test_a_full_disk_stops_with_one_line_and_resumes_exactly(
    small_disk: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = small_disk / "runs"
    exp = storage / NAME
    # 1. No room for a checkpoint: the trial fails writing it, and the sweep stops at once.
    first = _sweep(storage, "--num-samples", str(TRIALS), "--max-concurrent", "1")
    _stopped(first, exp, f"storage {exp} is full: trial ", "the sweep needs at least")
    assert "No space left on device" not in first.stdout + first.stderr.replace(
        "(No space left on device)", "", 1
    )  # Ray's tracebacks of each failed save and retry are left out

    # 2. Room for a few checkpoints: the resumed sweep stops before the storage is full.
    _remount(small_disk, SMALL)
    second = _sweep(storage, "--resume")
    _stopped(second, exp, f"storage {exp} is nearly full: ", "free at least")
    before = _rows(exp)
    finished = [d.name for d in trial_dirs(exp) if read_results(d).rows[-1].get("done")]
    assert before and len(before) <= TRIALS

    # A copy whose journal a full disk cut mid-record: refused before Ray starts, naming it.
    copy = tmp_path / "copy" / NAME
    shutil.copytree(exp, copy, ignore=shutil.ignore_patterns(f"{TRIAL_DIR_PREFIX}*"))
    journal = copy / OPTUNA_JOURNAL
    journal.write_bytes(journal.read_bytes()[:-7])
    whole = journal.read_bytes().rindex(b"\n") + 1  # bytes of the whole records
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:  # in this process: it ends before Ray starts
        run(_sweep_args(copy.parent, "--resume"))
    assert refused.value.code == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line.endswith(
        f"--resume: {journal}: its last record is cut short after byte {whole} (a write "
        f"stopped by a full disk or a crash); Optuna would append to the cut record: cut it "
        f"away with `truncate -s {whole} {journal}` to resume without it, or start a new --name"
    )

    # Space freed: the same experiment resumes to the end, nothing trained twice.
    _remount(small_disk, LARGE)
    resumed = _sweep(storage, "--resume", "--no-export")
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-4000:]
    summary = json.loads((exp / "summary.json").read_text())
    assert summary["state"] == "finished" and summary["trials"] == TRIALS
    after = _rows(exp)
    assert len(after) == TRIALS
    for epochs in after.values():
        assert epochs == sorted(epochs) and set(epochs) == set(range(1, int(max(epochs)) + 1))
    for name in finished:
        assert after[name] == before[name]  # finished before the stop: not trained again
