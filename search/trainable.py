"""The Ray Tune adapter around `trainables.train.train`.

Ray hands a dict; the adapter turns it into a `TrialConfig`, restores the trial's checkpoint
when Ray has one (a retry after a worker died, or a resumed experiment), and reports each epoch
with `ray.tune.report(metrics, checkpoint=...)` (the `ray.train.*` versions fail inside Tune
2.60). Ray adds `hostname`, `node_ip` and `pid` to every result row and the adapter adds
`node_id` (the id `ray.nodes()` and `ray status` use), so each trial's node is in its
`result.json` even where several nodes share one address.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import ray
from ray import tune

from search.checkpoints import plan_checkpoints
from search.gpu_memory import capped
from trainables.config import TrialConfig
from trainables.data import Dataset, dataset_key
from trainables.mapped import load_mapped
from trainables.train import train

# Decoded datasets kept across trials that reuse this worker process (TuneConfig.reuse_actors),
# keyed by everything that changes the decoded arrays or the split.
_DATASETS: dict[tuple, Dataset] = {}
_MAX_CACHED = 2


def dataset_for(cfg: TrialConfig) -> Dataset:
    key = dataset_key(cfg)
    if key not in _DATASETS:
        while len(_DATASETS) >= _MAX_CACHED:
            _DATASETS.pop(next(iter(_DATASETS)))
        _DATASETS[key] = load_mapped(cfg)  # no Python object per image in this process
    return _DATASETS[key]


def train_trial(config: dict[str, Any]) -> None:
    """Ray Tune function trainable: one trial, one `TrialConfig`."""
    cfg = TrialConfig.from_dict(config)
    _limit_threads()
    dataset = dataset_for(cfg)
    with tempfile.TemporaryDirectory(prefix="cxr-restore-") as tmp:
        resume_from = None
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            # Copy to local disk: the checkpoint may live in remote storage (s3://...).
            resume_from = Path(checkpoint.to_directory(str(Path(tmp) / "checkpoint")))
        # Only trials Ray gave a GPU use one, even on a machine with GPUs, and only where this
        # process can use CUDA: a node may advertise a GPU it lacks (the fake autoscaler's nodes).
        device = "cuda" if ray.get_gpu_ids() and _cuda_usable() else "cpu"
        share = _gpu_share() if device == "cuda" else None
        if share is not None:  # checkpoint cadence from this card's measured save/epoch times
            cfg = plan_checkpoints(cfg, config, dataset.train.labels)
        # The allocator stays inside the share Ray gave (fractional GPUs are logical only); the
        # train split stays on the card only when it fits what the share leaves the data.
        with capped(cfg, share, train_images=len(dataset.train)) as budget:
            train(
                cfg,
                _report,
                resume_from=resume_from,
                dataset=dataset,
                device=device,
                data_budget=budget,
            )


def _gpu_share() -> float | None:
    """This trial's GPU share as Ray granted it (e.g. 0.25), None without a GPU."""
    share = tune.get_context().get_trial_resources().required_resources.get("GPU", 0.0)
    return float(share) or None


def _report(metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
    # Ray copies the checkpoint into the trial's storage during report(), before train()
    # deletes its temporary directory.
    checkpoint = None if checkpoint_dir is None else tune.Checkpoint.from_directory(checkpoint_dir)
    node_id = ray.get_runtime_context().get_node_id()
    tune.report({**metrics, "node_id": node_id}, checkpoint=checkpoint)


def _cuda_usable() -> bool:
    import torch

    if torch.cuda.is_available():
        return True
    print(
        "Ray gave this trial a GPU, but CUDA is unavailable here: training on the CPU", flush=True
    )
    return False


def _limit_threads() -> None:
    """One intra-op thread per CPU Ray gave this trial (Ray sets OMP_NUM_THREADS to it)."""
    import torch

    threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if threads > 0:
        torch.set_num_threads(threads)
