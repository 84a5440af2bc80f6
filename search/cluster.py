"""The Ray session of a sweep: join a cluster (--address) or start Ray on this machine, and
find the GPUs trials will get."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator


def quiet_ray(verbose: bool) -> None:
    """Keep Ray's own output off the terminal unless --verbose; set before Ray starts.

    - Its "Configuration for experiment" box and a TensorBoard hint at a staging folder: the new
      output engine prints both even at verbose=0, the legacy one prints nothing at 0.
    - Its C++ log lines, such as the error-level core_worker.cc warning about the W&B logging
      actors' constructor arguments (Ray creates them with max_restarts=-1). Ray then prints one
      info line saying it read RAY_BACKEND_LOG_LEVEL; that one cannot be turned off.
    - Its Python INFO lines: `ray_logging_level`.
    """
    if verbose:
        return
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")


def ray_logging_level(verbose: bool) -> int:
    return logging.INFO if verbose else logging.WARNING


def detect_gpus(address: str | None, verbose: bool = False) -> tuple[int, int]:
    """(GPUs, bytes of one card) here, or on the cluster at `address` (joined here)."""
    if not address:
        return local_gpus()
    import ray

    ray.init(address=address, log_to_driver=verbose, logging_level=ray_logging_level(verbose))
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


@contextlib.contextmanager
def local_ray(verbose: bool = False) -> Iterator[None]:
    """Start Ray on this machine unless one is running (joined with --address); stop it after.
    Trials' output reaches this terminal only with --verbose (the progress lines cover it)."""
    import ray

    if ray.is_initialized():
        yield
        return
    temp_dir = tempfile.mkdtemp(prefix="r", dir="/tmp")  # short: Ray's socket paths
    ray.init(
        object_store_memory=200 * 2**20,  # bytes; trials pass nothing big through it
        include_dashboard=False,
        log_to_driver=verbose,
        logging_level=ray_logging_level(verbose),
        _temp_dir=temp_dir,
    )
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
