"""Class balance strategies (seed section 1.3): which training images an epoch sees, and how the
loss weighs them.

- `original`: every training image once per epoch, shuffled.
- `undersample`: every class drawn down to the minority count without replacement, re-drawn each
  epoch, so over many epochs every image of the majority classes is still seen.
- `oversample`: every class brought up to the majority count; each epoch holds every original
  image once plus minority images drawn with replacement to fill the gap, re-drawn each epoch.
- `class_weights`: every image once per epoch, and the cross-entropy weighs each class by its
  inverse training frequency (scikit-learn's 'balanced' weights).
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.utils.class_weight import compute_class_weight

from trainables.vocab import BALANCES


def _check_strategy(strategy: str) -> None:
    if strategy not in BALANCES:
        raise ValueError(f"unknown balance {strategy!r}; expected one of {sorted(BALANCES)}")


def _check_labels(labels: torch.Tensor) -> torch.Tensor:
    if labels.ndim != 1 or labels.numel() == 0:
        raise ValueError(f"labels must be a non-empty 1-D tensor, got shape {tuple(labels.shape)}")
    return labels.detach().to("cpu", torch.int64)


def epoch_indices(
    strategy: str, labels: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Indices into the training split for one epoch, shuffled (int64, CPU).

    `generator` is a CPU generator; under- and oversampling draw new samples on every call, so
    call this once per epoch.
    """
    _check_strategy(strategy)
    labels = _check_labels(labels)
    if strategy in ("original", "class_weights"):
        return torch.randperm(len(labels), generator=generator)

    per_class = [torch.nonzero(labels == c).flatten() for c in torch.unique(labels)]
    counts = [len(idx) for idx in per_class]
    chosen = []
    if strategy == "undersample":
        target = min(counts)
        for idx in per_class:
            chosen.append(idx[torch.randperm(len(idx), generator=generator)[:target]])
    else:  # oversample: all originals, then draws with replacement up to the majority count
        target = max(counts)
        for idx in per_class:
            extra = torch.randint(len(idx), (target - len(idx),), generator=generator)
            chosen.append(torch.cat([idx, idx[extra]]))
    picked = torch.cat(chosen)
    return picked[torch.randperm(len(picked), generator=generator)]


def loss_weights(strategy: str, labels: torch.Tensor, num_classes: int) -> torch.Tensor | None:
    """Cross-entropy class weights (float32, shape (num_classes,)) for `class_weights`, else None.

    Weights are n_samples / (num_classes * count_c), so a balanced split gets all ones.
    """
    _check_strategy(strategy)
    if strategy != "class_weights":
        return None
    labels = _check_labels(labels).numpy()
    classes = np.arange(num_classes)
    missing = sorted(set(classes.tolist()) - set(np.unique(labels).tolist()))
    if missing:
        raise ValueError(
            f"class_weights needs every class in the training labels; missing {missing}"
        )
    weights = compute_class_weight("balanced", classes=classes, y=labels)
    return torch.tensor(weights, dtype=torch.float32)
