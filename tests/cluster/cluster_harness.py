"""Helpers shared by the cluster tests: a `search.run` subprocess, polling, result rows, and
finding the processes a test started.

The sweeps run `tests/cluster/space_cluster.py`: the real trainable on the small phantom at
32 px, every trial all MAX_EPOCHS epochs (no early stopping), so a trial that stops short can
only be a lost result.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SPACE = Path(__file__).with_name("space_cluster.py")
MAX_EPOCHS = 5  # space_cluster.MAX_EPOCHS; every trial must report epochs 1..5
SWEEP_TIMEOUT = 300  # seconds, per search.run process

SWEEP_FLAGS = [
    "--space",
    str(SPACE),
    "--profile",
    "cpu",
    "--data",
    "phantom:small",
    "--cpus-per-trial",
    "1",
    "--max-concurrent",
    "2",
    "--grace-period",
    str(MAX_EPOCHS),
    "--seed",
    "0",
    "--wandb-mode",
    "disabled",
    "--no-export",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention `text` (Ray puts its temp dir in all)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline and int(pid) != os.getpid():
            found.append(f"{pid}: {cmdline[:160]}")
    return found


def wait_until(
    condition: Callable[[], Any], timeout: float, sweep: Sweep | None = None, interval: float = 0.1
) -> Any:
    """Poll `condition` every `interval` seconds until it returns something truthy; fail early
    if the sweep exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if sweep is not None and sweep.process.poll() is not None:
            pytest.fail(f"search.run exited ({sweep.process.returncode}) first:\n{sweep.tail()}")
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout} s" + (f":\n{sweep.tail()}" if sweep else ""))


def parse_rows(text: str) -> list[dict[str, Any]]:
    """result.json rows; a line still being written is skipped."""
    rows = []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def local_trial_rows(experiment: Path) -> dict[str, list[dict[str, Any]]]:
    return {p.parent.name: parse_rows(p.read_text()) for p in experiment.glob("*/result.json")}


class Sweep:
    """One `python -m search.run` process, logging to a file."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.log = cwd / "search-run.log"
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "search.run", *args],
                cwd=cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def wait(self, timeout: float = SWEEP_TIMEOUT) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(f"search.run still running after {timeout} s:\n{self.tail()}")

    def kill(self) -> None:
        """SIGKILL: no handler runs, like a head node losing power."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


def wait_for_exit(temp_dir: str, timeout: float = 20) -> list[str]:
    deadline = time.monotonic() + timeout
    while (left := processes_mentioning(temp_dir)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def check_continued_from_checkpoint(
    rows: list[dict[str, Any]],
    node_key: str,
    lost: str,
    killed_after_epoch: int,
    replay_ok: bool = False,
) -> None:
    """The rows of a trial whose node `lost` (by `node_key`) died: it ran some epochs there,
    then every later epoch elsewhere, going on from its last checkpoint."""
    nodes = [r[node_key] for r in rows]
    on_lost = nodes.count(lost)
    # The kill really came mid-trial: the lost node ran some epochs, another node ran the rest.
    assert killed_after_epoch <= on_lost < MAX_EPOCHS, nodes
    assert nodes[:on_lost] == [lost] * on_lost, nodes
    assert lost not in nodes[on_lost:], nodes
    # It went on from the last checkpoint: the next epoch after the move is not epoch 1. With
    # `replay_ok`, the epoch in flight when the node died may be trained once more (Ray restores
    # the newest checkpoint it had registered, which can lag the newest result row by one).
    epochs = [r["epoch"] for r in rows]
    after, before = rows[on_lost]["epoch"], rows[on_lost - 1]["epoch"]
    # The kill came after epoch 2 or later, so a trial that restarted from scratch (epoch 1
    # again) fails here even where one replayed epoch is allowed.
    assert killed_after_epoch >= 2 and after >= 2, (killed_after_epoch, epochs)
    assert after == before + 1 or (replay_ok and after == before), epochs
    assert epochs[on_lost:] == list(range(int(after), int(after) + len(epochs) - on_lost)), epochs
