"""The Ray session of a sweep: join a cluster (--address) or start Ray on this machine, and
find the GPUs trials will get."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cxr_tune import REPO
from search.signals import keep_sigterm_handler
from search.tracking import SECRET_ENV


def quiet_ray(verbose: bool) -> None:
    """Keep Ray's own output off the terminal unless --verbose; set before Ray starts.

    - Its "Configuration for experiment" box and a TensorBoard hint at a staging folder: the new
      output engine prints both even at verbose=0, the legacy one prints nothing at 0.
    - Its C++ log lines, such as error-level core_worker.cc warnings about actors created with
      max_restarts=-1. The info line Ray then prints saying it read RAY_BACKEND_LOG_LEVEL is
      held back by `without_level_notice`.
    - Its Python INFO lines: `ray_logging_level`.
    """
    if verbose:
        return
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")


# Ray's C++ logging says it read RAY_BACKEND_LOG_LEVEL in an INFO line ("logging.cc:303: Set ray
# log level from environment variable ...") before that level applies (checked with Ray 2.60).
_LEVEL_NOTICE = re.compile(r"logging\.cc:\d+: Set ray log level from environment variable")


@contextlib.contextmanager
def without_level_notice(verbose: bool) -> Iterator[None]:
    """Start Ray inside this: Ray's C++ code writes its level notice straight to file descriptor
    2 of the process that calls ray.init, so fd 2 goes to a temporary file while Ray starts, and
    everything else written there is passed on to stderr afterwards. With --verbose (or without
    RAY_BACKEND_LOG_LEVEL, so no notice) nothing is held."""
    if verbose or "RAY_BACKEND_LOG_LEVEL" not in os.environ:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines = held.read().decode(errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(x for x in lines if not _LEVEL_NOTICE.search(x)))
            sys.stderr.flush()


def ray_logging_level(verbose: bool) -> int:
    return logging.INFO if verbose else logging.WARNING


def detect_gpus(address: str | None, verbose: bool = False) -> tuple[int, int]:
    """(GPUs, bytes of one card) here, or on the cluster at `address` (joined here)."""
    if not address:
        return local_gpus()
    import ray

    with keep_sigterm_handler(), _empty_dir() as neutral, without_level_notice(verbose):
        ray.init(
            address=address,
            log_to_driver=verbose,
            logging_level=ray_logging_level(verbose),
            runtime_env=worker_runtime_env(neutral),
        )
    gpus = int(ray.cluster_resources().get("GPU", 0))
    return gpus, cluster_card_bytes() if gpus else 0


def local_gpus() -> tuple[int, int]:
    """(visible GPUs, bytes of the smallest) on this machine."""
    import torch

    count = torch.cuda.device_count()
    if not count:
        return 0, 0
    return count, min(torch.cuda.get_device_properties(i).total_memory for i in range(count))


def cluster_card_bytes(timeout_s: float = 120.0) -> int:
    """Memory of a GPU on the cluster's GPU nodes (the driver may run on a CPU-only head)."""
    import ray

    @ray.remote(num_gpus=1, num_cpus=0)
    def card() -> int:
        import torch

        return torch.cuda.get_device_properties(0).total_memory

    try:
        return int(ray.get(card.remote(), timeout=timeout_s))
    except Exception as err:  # no free GPU in time: fall back to one whole GPU per trial
        print(
            f"could not measure a GPU's memory on the cluster ({err}); trials get 1 GPU "
            f"each unless --gpus-per-trial says otherwise",
            file=sys.stderr,
        )
        return 0


def node_sizes(address: str | None) -> list[tuple[float, float]]:
    """(CPUs, GPUs) of each node a trial can run on: this machine, or the joined cluster's
    live nodes (an autoscaling cluster's future nodes are unknown: [] then checks nothing)."""
    if not address:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return [(float(cpus or 1), float(local_gpus()[0]))]
    import ray

    return [
        (float(n["Resources"].get("CPU", 0)), float(n["Resources"].get("GPU", 0)))
        for n in ray.nodes()
        if n.get("Alive")
    ]


@contextlib.contextmanager
def local_ray(verbose: bool = False) -> Iterator[None]:
    """Start Ray on this machine unless one is running (joined with --address); stop it after.
    Trials' output reaches this terminal only with --verbose (the progress lines cover it).

    What it starts cannot leak a secret or outlive the driver: Ray's processes start without
    the variables of `SECRET_ENV` (the driver opens the trials' W&B runs itself,
    `search.wandb_callback`); Ray makes its temp dir and session folders mode 0777, so that
    dir lives inside a 0700 folder of this user (no other user can reach Ray's logs); and a
    `search.watchdog` ends Ray's processes and removes the folder when the driver ends, even
    by SIGKILL.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    private = tempfile.mkdtemp(prefix="r", dir="/tmp")  # mode 0700; short: Ray's socket paths
    temp_dir = os.path.join(private, "ray")  # Ray chmods this one 0777
    watchdog = subprocess.Popen(
        [sys.executable, "-m", "search.watchdog", str(os.getpid()), private],
        stdin=subprocess.PIPE,
        start_new_session=True,  # a kill of the driver's process group spares it
        cwd=REPO,  # `-m` imports from the working folder first: the project's, not the user's
    )
    hidden = {k: os.environ.pop(k) for k in SECRET_ENV if k in os.environ}
    try:
        # search.signals: SIGTERM stops the sweep as Ctrl-C does
        with (
            keep_sigterm_handler(),
            _empty_dir(private) as neutral,
            without_level_notice(verbose),
        ):
            ray.init(
                object_store_memory=200 * 2**20,  # bytes; trials pass nothing big through it
                include_dashboard=False,
                log_to_driver=verbose,
                logging_level=ray_logging_level(verbose),
                runtime_env=worker_runtime_env(neutral),
                _temp_dir=temp_dir,
            )
    finally:
        os.environ.update(hidden)  # the driver keeps the key, in memory
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(private, ignore_errors=True)
        watchdog.stdin.close()  # tells the watchdog to end what Ray left
        with contextlib.suppress(subprocess.TimeoutExpired):
            watchdog.wait(timeout=10)


def worker_runtime_env(neutral: str) -> dict[str, Any]:
    """Ray's runtime_env for the sweep: trial workers import the project's packages from where
    this driver did (`cxr_tune.REPO`), whatever the user's working folder holds.

    Ray puts the driver's working folder first on every worker's sys.path unless the job has a
    `working_dir` (ray/_private/worker.py, `connect`); a `search.py` or `analysis.py` there
    would shadow the package and fail every trial. So the workers get an empty `working_dir`
    (`neutral`; Ray uploads it once, at `ray.init`), and REPO joins their PYTHONPATH when a
    fresh interpreter would not find the packages by itself (a checkout run uninstalled)."""
    env: dict[str, Any] = {"working_dir": neutral}
    if REPO not in _site_dirs():
        paths = [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        env["env_vars"] = {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}
    return env


def _site_dirs() -> set[Path]:
    """Where this interpreter finds installed packages without PYTHONPATH."""
    found = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    found |= set(site.getsitepackages()) | {site.getusersitepackages()}
    return {Path(p).resolve() for p in found}


@contextlib.contextmanager
def _empty_dir(parent: str | None = None) -> Iterator[str]:
    """An empty folder for the time of `ray.init` (its upload of `working_dir`)."""
    folder = tempfile.mkdtemp(prefix="workers-", dir=parent)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
