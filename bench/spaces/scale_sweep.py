"""The sweep of `bench/scale.py --sweep`: two short trials that load a large dataset the way every
trial does (`search.trainable`), so their processes' memory can be measured against its size.

One epoch of a few steps: the figure is memory, not accuracy.
"""

from __future__ import annotations

METRIC = "val_loss"
MODE = "min"
MAX_EPOCHS = 1
GRACE_PERIOD = 1
REDUCTION_FACTOR = 3
NUM_SAMPLES = 2


def define(trial):
    trial.suggest_float("lr", 1e-4, 1e-3, log=True)
    return {"model": "simple_cnn", "image_size": 64, "max_train_batches": 4, "balance": "original"}
