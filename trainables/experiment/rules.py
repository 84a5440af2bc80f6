"""The rules every reader of an experiment shares: the metric's mode (`check_mode`), which
epochs are ASHA's rungs (`asha_milestones`) and which of two metric values is better
(`is_better`). No file of its own."""

from __future__ import annotations

import math

METRIC_MODES = ("max", "min")
DEFAULT_METRIC, DEFAULT_MODE = "val_acc", "max"  # for an experiment without cxr_tune.json


def check_mode(mode: str, where: str = "mode") -> str:
    if mode not in METRIC_MODES:
        raise ValueError(f"{where}: unknown mode {mode!r}; expected one of {list(METRIC_MODES)}")
    return mode


def asha_milestones(grace_period: int, reduction_factor: int, max_t: int) -> tuple[int, ...]:
    """The rungs of Ray's ASHAScheduler (one bracket), ascending: grace * rf**k for Ray's own
    count of rungs, int(log(max_t / grace) / log(rf) + 1), so a trial stopped at a rung ends on a
    checkpoint. The one rule: checkpoints, the report's ASHA figure and its prose all use it."""
    if grace_period < 1 or reduction_factor < 2 or max_t < grace_period:
        raise ValueError(
            f"need grace_period >= 1, reduction_factor >= 2 and max_t >= grace_period, got "
            f"{grace_period}, {reduction_factor}, {max_t}"
        )
    rungs = int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1)
    return tuple(sorted(int(grace_period * reduction_factor**k) for k in range(rungs)))


def is_better(a: float, b: float, mode: str) -> bool:
    """Whether metric value `a` beats `b` under `mode` (NaN never wins)."""
    if math.isnan(a):
        return False
    if math.isnan(b):
        return True
    return a > b if mode == "max" else a < b
