"""A sweep stops before its storage is full, the way Ctrl-C stops it, and says how much it needs.

A full disk in the middle of a sweep tears whatever is being written at that moment: Ray's
trial table, a checkpoint Ray is copying, Optuna's journal (each then refused by name on
`--resume`, `search.repair.resume_problem`), and every trial errors with its own tracebacks,
retried. So a local sweep:

- watches the free space of its storage (`shutil.disk_usage`, one statvfs call) after every
  result and checkpoint: when the running trials' next checkpoints (the largest one seen so far,
  each) and `RESERVE_BYTES` no longer fit, it prints one line naming the storage and the bytes
  needed, and stops as SIGINT does (`search.signals.stop`): the trials stop, Ray saves a whole
  state, and `--resume` continues once space is freed;
- stops the same way at the first trial that fails for want of space (a disk filled by
  something else, or a first checkpoint larger than all the space left), instead of Ray's
  retries and a traceback per failed save (those lines of Ray's are left out); the trial's
  error pickle, torn when Ray wrote it to the full disk, is removed (Ray reads error.txt);
- keeps `RESERVE_BYTES` of its storage in a file (`SPACE_RESERVE_FILE`) while it runs and frees
  it when it stops, so Ray's last save of the experiment state has room even then.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from ray.tune import Callback

from search import signals
from trainables.experiment import CHECKPOINT_GLOB, SPACE_RESERVE_FILE, trial_dirs

MIB = 2**20
RESERVE_BYTES = 8 * MIB  # Ray's state files and the searcher's, result rows, W&B run files
NO_SPACE = os.strerror(errno.ENOSPC)  # "No space left on device"


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


class _NoFullDiskTracebacks(logging.Filter):
    """Leaves out Ray's lines about a write that found no space (each failed save of the
    experiment state, each failed trial, with tracebacks): the callback's one line says it."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return NO_SPACE not in record.getMessage() and NO_SPACE not in str(exc or "")


class DiskSpaceCallback(Callback):
    """Stop the sweep (as SIGINT does) before `experiment_dir`'s file system is full, or at the
    first trial that failed for want of space."""

    def __init__(self, experiment_dir: str) -> None:
        self.experiment_dir = Path(experiment_dir)
        self.checkpoint_bytes = 0
        self.stopped = False

    @property
    def reserve(self) -> Path:
        return self.experiment_dir / SPACE_RESERVE_FILE

    def setup(self, **info: Any) -> None:
        for handler in logging.getLogger("ray").handlers:  # Ray's own, set by ray.init
            handler.addFilter(_NoFullDiskTracebacks())
        if self.experiment_dir.is_dir():
            self.checkpoint_bytes = largest_checkpoint(self.experiment_dir)
            with contextlib.suppress(OSError):  # no room even for it: the first check stops
                if not self.reserve.is_file():
                    self.reserve.write_bytes(bytes(RESERVE_BYTES))

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if iteration <= 1:  # before the first trial writes anything (a resume, too)
            self.check(self._running(trials))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info):
        self.check(self._running(trials))

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info):
        self.checkpoint_bytes = max(self.checkpoint_bytes, tree_bytes(checkpoint.path))
        self.check(self._running(trials))

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.failed(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.failed(trial)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.reserve.unlink(missing_ok=True)

    @staticmethod
    def _running(trials: list) -> int:
        """Trials that will write a next checkpoint: the running ones, or the next one."""
        return max(1, sum(1 for t in trials if t.status == "RUNNING"))

    def check(self, running: int) -> None:
        if self.stopped or not self.experiment_dir.is_dir():
            return
        free = shutil.disk_usage(self.experiment_dir).free
        missing = shortfall(free, running, self.checkpoint_bytes)
        if missing:
            self.stop(
                f"storage {self.experiment_dir} is nearly full: {_mib(free)} free, the sweep "
                f"needs {_mib(free + missing)} ({running} trial(s) x "
                f"{_mib(self.checkpoint_bytes)} for their next checkpoints + "
                f"{_mib(RESERVE_BYTES)} for the saved state); stopping before anything is torn: "
                f"free at least {_mib(missing)} there, then resume"
            )

    def failed(self, trial: Any) -> None:
        """Stop at a trial that failed for want of space, before Ray retries it: its error says
        so, or the storage has less free space than the reserve this sweep still holds."""
        if self.stopped:
            return
        try:
            error = str(trial.get_pickled_error() or trial.get_error() or "")
        except Exception:  # Ray wrote the error's pickle when the disk was full: torn
            error = ""
            Path(trial.pickled_error_file).unlink(missing_ok=True)  # Ray then reads error.txt
        full = shutil.disk_usage(self.experiment_dir).free < RESERVE_BYTES
        if NO_SPACE not in error and not full:
            return
        needed = RESERVE_BYTES + max(self.checkpoint_bytes, largest_checkpoint(self.experiment_dir))
        self.stop(
            f"storage {self.experiment_dir} is full: trial {trial.trial_id} could not write "
            f"there ({NO_SPACE}); the sweep needs at least {_mib(needed)} free (a checkpoint + "
            f"{_mib(RESERVE_BYTES)} for the saved state): free space there, then resume"
        )

    def stop(self, line: str) -> None:
        self.stopped = True
        self.reserve.unlink(missing_ok=True)  # room for Ray's last save of the experiment
        print(f"\n{line}", file=sys.stderr, flush=True)
        signals.stop(signals.DISK_FULL)
