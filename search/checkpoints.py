"""How often a trial checkpoints: under 2% of its training time, and always where ASHA decides.

A checkpoint costs its save time (the measured `save_s` of `search/gpu_memory/`: `torch.save`
plus the copy Ray makes into the trial's storage); an epoch costs its training and validation
time. Every trial always saves at ASHA's rung epochs (`TrialConfig.checkpoint_epochs`, so a trial
stopped at a rung ends on a checkpoint and stopping and resuming stay exact) and at its last
epoch; `choose_checkpoint_every` adds the most frequent periodic checkpoint that keeps the whole
trial's save time under `MAX_CHECKPOINT_SHARE`. After a node failure a trial restarts from its
last checkpoint and loses the epochs since (`lost_work`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from search.gpu_memory import MemoryTable, key_for
from trainables.config import TrialConfig
from trainables.experiment import asha_milestones

__all__ = ["asha_milestones"]  # the rung rule lives with the experiment record

MAX_CHECKPOINT_SHARE = 0.02  # checkpoints may cost at most this share of a trial's epochs


def checkpoint_every(save_s: float, epoch_s: float, max_share: float = MAX_CHECKPOINT_SHARE) -> int:
    """The fewest epochs between checkpoints that keep save time under `max_share` of the
    training time between them: save_s / (every * epoch_s) <= max_share."""
    if save_s < 0 or epoch_s <= 0 or not (0 < max_share < 1):
        raise ValueError(
            f"need save_s >= 0, epoch_s > 0 and 0 < max_share < 1, got {save_s}, {epoch_s}, "
            f"{max_share}"
        )
    return max(1, math.ceil(save_s / (max_share * epoch_s) - 1e-9))


def choose_checkpoint_every(
    save_s: float,
    epoch_s: float,
    epochs: int,
    milestones: Sequence[int] = (),
    max_share: float = MAX_CHECKPOINT_SHARE,
) -> int:
    """The most frequent periodic checkpoint whose whole-trial cost (the periodic saves plus the
    ASHA milestones and the last epoch, which are always saved) stays under `max_share`; when the
    fixed saves alone cost more, no periodic ones (every = epochs): the milestones still bound
    the work a node failure loses."""
    for every in range(min(epochs, checkpoint_every(save_s, epoch_s, max_share)), epochs + 1):
        if (
            checkpoint_cost(save_s, epoch_s, saved_epochs(every, epochs, milestones), epochs)
            <= max_share
        ):
            return every
    return epochs


def saved_epochs(every: int, epochs: int, milestones: Sequence[int] = ()) -> list[int]:
    """The epochs that get a checkpoint (`trainables.train.train`'s rule)."""
    return sorted(
        {e for e in range(every, epochs + 1, every)}
        | {m for m in milestones if m <= epochs}
        | {epochs}
    )


def checkpoint_cost(save_s: float, epoch_s: float, saved: Sequence[int], epochs: int) -> float:
    """Save time over training time of a whole trial."""
    return len(saved) * save_s / (epochs * epoch_s)


def lost_work(saved: Sequence[int], epochs: int) -> tuple[int, float]:
    """Epochs of training lost when the node dies: (worst, mean over a failure at a uniformly
    random moment of the trial). A failure inside a gap of g epochs since the last checkpoint
    loses up to g epochs, g / 2 on average, and the gap is hit with probability g / epochs."""
    points = [0, *sorted(saved)]
    gaps = [b - a for a, b in itertools.pairwise(points)]
    return max(gaps), sum(g * g / 2 for g in gaps) / epochs


def plan_checkpoints(
    cfg: TrialConfig,
    raw: Mapping[str, Any],
    train_labels: Any,
    table: MemoryTable | None = None,
) -> TrialConfig:
    """The trial's `checkpoint_every` from its model's measured save time against its epoch time
    on this card (kept as given when the space or run set it, or nothing was measured)."""
    import torch

    if "checkpoint_every" in raw or not torch.cuda.is_available():
        return cfg
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    key = key_for(cfg, props.name, props.total_memory, len(train_labels))
    m, _ = (table or MemoryTable.load()).lookup(key)
    if m is None or m.step_s <= 0:
        return cfg
    from trainables.balance import epoch_indices

    if train_labels.ndim == 2:  # multi-label: every image once per epoch
        images = len(train_labels)
    else:
        images = len(epoch_indices(cfg.balance, train_labels, torch.Generator().manual_seed(0)))
    if cfg.max_train_batches:
        images = min(images, cfg.max_train_batches * cfg.batch_size)
    # Seconds per image at the measured (largest) batch: smaller batches only run slower, so the
    # epoch is never overestimated and the share stays under MAX_CHECKPOINT_SHARE.
    epoch_s = images * m.step_s / m.key.batch_size + m.eval_s
    every = choose_checkpoint_every(m.save_s, epoch_s, cfg.epochs, cfg.checkpoint_epochs)
    return replace(cfg, checkpoint_every=every)
