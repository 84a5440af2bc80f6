"""SIGTERM stops a sweep the way Ctrl-C does.

Kubernetes, SLURM and `ray job stop` end a driver with SIGTERM. `ray.init` installs a SIGTERM
handler that raises `SystemExit` wherever the driver happens to be (inside Tune's loop, it left
Ray's C++ core worker to abort: exit 134, no summary, no resume hint). Here SIGTERM is handed to
whatever handles SIGINT at that moment: inside `Tuner.fit`, Tune's own handler (trials stop,
the experiment state is saved, `fit` returns an interrupted result); elsewhere Python's, which
raises `KeyboardInterrupt`. A second SIGTERM, like a second Ctrl-C, skips Tune's last save.
`exit_code` turns the interrupted exit 130 into 143 (128 + SIGTERM) when SIGTERM was the cause;
`stop` is the same stop asked for by the driver itself (a full disk, `search.disk`).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from types import FrameType

INTERRUPTED = 128 + signal.SIGINT  # 130, a Ctrl-C's exit status
TERMINATED = 128 + signal.SIGTERM  # 143
DISK_FULL = 1  # stopped because the storage is (nearly) full (`search.disk`)
_stops: list[int] = []  # the exit status of each stop this process asked for or received


def on_sigterm(signum: int, frame: FrameType | None) -> None:
    _stops.append(TERMINATED)
    # os.write: a print here could re-enter a print the main thread was in the middle of.
    os.write(2, b"\nSIGTERM: stopping the trials and saving the experiment (as Ctrl-C does)\n")
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:  # SIGINT ignored or at its default: stop all the same
        raise KeyboardInterrupt


def install() -> None:
    """Make SIGTERM stop this driver as SIGINT does (main thread only, as any handler)."""
    signal.signal(signal.SIGTERM, on_sigterm)


@contextlib.contextmanager
def keep_sigterm_handler() -> Iterator[None]:
    """Around `ray.init`: put back the SIGTERM handler it replaces with its own."""
    previous = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def stop(code: int) -> None:
    """Stop the sweep as Ctrl-C does, from the driver's main thread (a Tune callback: a full
    disk, `search.disk`); the driver then exits with `code`."""
    _stops.append(code)
    signal.raise_signal(signal.SIGINT)


@contextlib.contextmanager
def sigint_handler_restored() -> Iterator[None]:
    """Around `Tuner.fit`: put back the SIGINT handler from before it. Tune installs its own
    (ray/tune/tune.py `_setup_signal_catching`, Ray 2.60) and restores the previous one only
    when a SIGINT arrives, so after a fit that ended on its own the next Ctrl-C (during the
    summary or the export) only set Tune's flag and was otherwise ignored."""
    previous = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def exit_code(code: int) -> int:
    """The driver's exit status: an interrupted run exits with the status of what stopped it
    (143 for SIGTERM), 130 for a Ctrl-C."""
    return _stops[0] if code == INTERRUPTED and _stops else code
