"""A sweep whose storage fills up stops with one line naming the storage and the bytes it needs,
leaves nothing torn, and `--resume` continues it exactly once space is freed (a small tmpfs,
grown). A copy of it whose Optuna journal is cut mid-record is refused naming the journal."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from search.repair import resume_problem
from trainables.experiment import OPTUNA_JOURNAL, TRIAL_DIR_PREFIX, read_results, trial_dirs

REPO = Path(__file__).resolve().parents[2]
NAME = "full"
TRIALS = 2
# spaces/smoke.py: a checkpoint is about 21 MB, one per epoch, and Ray keeps a trial's best two
# and its latest. 80 MB holds the first trial's three, not a fourth: the sweep stops in trial 1.
SMALL, LARGE = "80m", "400m"

pytestmark = pytest.mark.slow


def _sweep(storage: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "search.run", "--space", "spaces/smoke.py"]
    command += ["--storage", str(storage), "--name", NAME, "--wandb-mode", "disabled", *extra]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture
def small_disk(tmp_path: Path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SMALL}", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _rows(exp: Path) -> dict[str, list[float]]:
    return {d.name: [r["epoch"] for r in read_results(d).rows] for d in trial_dirs(exp)}


def test_a_full_disk_stops_with_one_line_and_resumes_exactly(
    small_disk: Path, tmp_path: Path
) -> None:
    storage = small_disk / "runs"
    exp = storage / NAME
    first = _sweep(storage, "--num-samples", str(TRIALS), "--max-concurrent", "1")
    out = first.stdout + first.stderr
    assert first.returncode == 1, out[-4000:]
    assert "Traceback" not in out, out[-4000:]
    [line] = [x for x in first.stderr.splitlines() if "nearly full" in x]
    assert line.startswith(f"storage {exp} is nearly full: ") and "free at least" in line
    assert "--resume" in first.stdout and "nothing exported" in first.stdout
    assert json.loads((exp / "summary.json").read_text())["state"] == "interrupted"
    assert resume_problem(exp) is None  # nothing it resumes from is torn
    before = _rows(exp)
    finished = [d.name for d in trial_dirs(exp) if read_results(d).rows[-1].get("done")]
    assert finished and len(before) < TRIALS

    # A copy whose journal a full disk cut mid-record: refused before Ray starts, naming it.
    copy = tmp_path / "copy" / NAME
    shutil.copytree(exp, copy, ignore=shutil.ignore_patterns(f"{TRIAL_DIR_PREFIX}*"))
    journal = copy / OPTUNA_JOURNAL
    journal.write_bytes(journal.read_bytes()[:-7])
    whole = journal.read_bytes().rindex(b"\n") + 1  # bytes of the whole records
    refused = _sweep(copy.parent, "--resume")
    assert refused.returncode == 2
    last_line = refused.stderr.strip().splitlines()[-1]
    assert last_line.endswith(
        f"--resume: {journal}: its last record is cut short after byte {whole} (a write "
        f"stopped by a full disk or a crash); Optuna would append to the cut record: cut it "
        f"away with `truncate -s {whole} {journal}` to resume without it, or start a new --name"
    )
    assert "Traceback" not in refused.stderr

    # Space freed: the same experiment resumes to the end, nothing trained twice.
    subprocess.run(["mount", "-o", f"remount,size={LARGE}", str(small_disk)], check=True)
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
