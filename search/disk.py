"""A sweep stops before its storage is full, the way Ctrl-C stops it, and says how much it needs.

A full disk in the middle of a sweep tears whatever is being written at that moment: Ray's
trial table, a checkpoint Ray is copying, Optuna's journal (each then refused by name on
`--resume`, `search.repair.resume_problem`), and every trial errors with its own traceback.
So a local sweep watches the free space of its storage (`shutil.disk_usage`, one statvfs call)
after every result and checkpoint: when the running trials' next checkpoints (the largest one
seen so far, each) and `RESERVE_BYTES` for Ray's state, result rows and W&B files no longer
fit, it prints one line naming the storage and the bytes needed, and stops as SIGINT does
(`search.signals.stop`): the trials stop, Ray saves a whole state, and `--resume` continues
once space is freed.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

from ray.tune import Callback

from search import signals
from trainables.experiment import CHECKPOINT_GLOB, trial_dirs

MIB = 2**20
RESERVE_BYTES = 8 * MIB  # Ray's state files and the searcher's, result rows, W&B run files


def tree_bytes(path: str | Path) -> int:
    """Bytes of the files under `path` (0 when it is gone)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:  # removed while we walked: Ray prunes old checkpoints
                pass
    return total


def largest_checkpoint(experiment_dir: Path) -> int:
    """Bytes of the largest checkpoint already in the experiment (a resume's estimate)."""
    sizes = [tree_bytes(c) for d in trial_dirs(experiment_dir) for c in d.glob(CHECKPOINT_GLOB)]
    return max(sizes, default=0)


def shortfall(free: int, running: int, checkpoint_bytes: int) -> int:
    """Bytes missing for `running` trials' next checkpoints plus the reserve; 0 when they fit."""
    return max(0, RESERVE_BYTES + running * checkpoint_bytes - free)


def _mib(n: int) -> str:
    return f"{n / MIB:.1f} MiB"


class DiskSpaceCallback(Callback):
    """Stop the sweep (as SIGINT does) before `experiment_dir`'s file system is full."""

    def __init__(self, experiment_dir: str) -> None:
        self.experiment_dir = Path(experiment_dir)
        self.checkpoint_bytes = 0
        self.stopped = False

    def setup(self, **info: Any) -> None:
        if self.experiment_dir.is_dir():
            self.checkpoint_bytes = largest_checkpoint(self.experiment_dir)

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if iteration <= 1:  # before the first trial writes anything (a resume, too)
            self.check(self._running(trials))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info):
        self.check(self._running(trials))

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info):
        self.checkpoint_bytes = max(self.checkpoint_bytes, tree_bytes(checkpoint.path))
        self.check(self._running(trials))

    @staticmethod
    def _running(trials: list) -> int:
        """Trials that will write a next checkpoint: the running ones, or the next one."""
        return max(1, sum(1 for t in trials if t.status == "RUNNING"))

    def check(self, running: int) -> None:
        if self.stopped or not self.experiment_dir.is_dir():
            return
        free = shutil.disk_usage(self.experiment_dir).free
        missing = shortfall(free, running, self.checkpoint_bytes)
        if not missing:
            return
        self.stopped = True
        print(
            f"\nstorage {self.experiment_dir} is nearly full: {_mib(free)} free, the sweep needs "
            f"{_mib(free + missing)} ({running} trial(s) x {_mib(self.checkpoint_bytes)} for "
            f"their next checkpoints + {_mib(RESERVE_BYTES)} for the saved state); stopping "
            f"before anything is torn: free at least {_mib(missing)} there, then resume",
            file=sys.stderr,
            flush=True,
        )
        signals.stop(signals.DISK_FULL)
