"""End every process a driver's local Ray started once the driver is gone, however it ended.

    python -m search.watchdog DRIVER_PID RAY_TEMP_DIR      (stdin: a pipe the driver holds)

`ray.init` starts the GCS and the raylet as children of the driver, and the raylet starts the
dashboard agent, the runtime-env agent, the log monitor and the workers. When the driver is
SIGKILLed the GCS and raylet die with it, but the agents and workers are re-parented and keep
running for a minute or more (measured: about 80 s). This watchdog, started by the driver in
its own session (so a kill of the driver's process group spares it), records the driver's
descendants every POLL_S seconds by pid and start time. When the driver's end of the pipe
closes (a clean exit or a kill: the kernel closes it either way) it sends SIGTERM to each
recorded process still alive and to every process whose command line names RAY_TEMP_DIR, then
SIGKILL after GRACE_S, and removes RAY_TEMP_DIR (Ray's session logs). Processes are ended by
their ids only, never by name.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import sys
from importlib.util import find_spec
from pathlib import Path

POLL_S = 0.5  # seconds between snapshots of the driver's descendants
GRACE_S = 2.0  # seconds between SIGTERM and SIGKILL


def _psutil():
    """psutil, as Ray vendors it (ray/thirdparty_files), without importing Ray itself."""
    try:
        import psutil
    except ImportError:
        spec = find_spec("ray")
        vendored = Path(spec.origin).parent / "thirdparty_files" if spec and spec.origin else None
        if vendored is not None:
            sys.path.insert(0, str(vendored))
        import psutil
    return psutil


def descendants(psutil, pid: int) -> dict[int, float]:
    """pid -> start time of every live descendant of `pid` (the start time guards against a
    recycled pid)."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return {}
    out = {}
    for child in children:
        try:
            out[child.pid] = child.create_time()
        except psutil.Error:
            pass
    return out


def naming(psutil, text: str) -> dict[int, float]:
    """Processes of this user whose command line contains `text` (Ray's temp dir)."""
    out = {}
    me = os.getpid()
    for proc in psutil.process_iter(["pid", "cmdline", "create_time", "uids"]):
        try:
            if proc.pid == me or proc.info["uids"].real != os.getuid():
                continue
            if any(text in part for part in proc.info["cmdline"] or ()):
                out[proc.pid] = proc.info["create_time"]
        except (psutil.Error, TypeError, AttributeError):
            pass
    return out


def still_running(psutil, processes: dict[int, float]) -> list:
    """The processes of `processes` (pid -> start time) that are still the ones recorded."""
    alive = []
    for pid, started in processes.items():
        try:
            proc = psutil.Process(pid)
            if abs(proc.create_time() - started) < 0.01:
                alive.append(proc)
        except psutil.Error:
            pass
    return alive


def end(psutil, processes: dict[int, float]) -> None:
    """SIGTERM, then SIGKILL after GRACE_S, each process that is still the one recorded."""
    alive = []
    for proc in still_running(psutil, processes):
        try:
            proc.send_signal(signal.SIGTERM)
            alive.append(proc)
        except psutil.Error:
            pass
    _, left = psutil.wait_procs(alive, timeout=GRACE_S)
    for proc in left:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(left, timeout=GRACE_S)


def watch(driver_pid: int, temp_dir: str) -> None:
    psutil = _psutil()
    seen: dict[int, float] = {}
    while True:
        seen.update(descendants(psutil, driver_pid))
        ready, _, _ = select.select([sys.stdin], [], [], POLL_S)
        if ready and not os.read(sys.stdin.fileno(), 1024):
            break  # EOF: the driver exited or was killed
    seen.pop(os.getpid(), None)
    end(psutil, {**seen, **naming(psutil, temp_dir)})
    shutil.rmtree(temp_dir, ignore_errors=True)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C meant for the sweep is not for us
    watch(int(sys.argv[1]), sys.argv[2])
