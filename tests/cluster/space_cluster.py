"""A space for the cluster tests: tiny real training, and no early stopping.

Every trial runs all MAX_EPOCHS (GRACE_PERIOD = MAX_EPOCHS leaves ASHA no rung to stop at), so
a trial that stops short can only be a lost result. An epoch (10 steps of 16 images at 32 px,
validation and a checkpoint) takes about a second on a busy 2-core machine, less when idle: time
enough to kill a node or the driver between two epochs.
"""

from __future__ import annotations

METRIC = "val_loss"
MODE = "min"
MAX_EPOCHS = 5  # epochs (the CPU profile's cap)
GRACE_PERIOD = 5  # epochs, = MAX_EPOCHS: ASHA never stops a trial
NUM_SAMPLES = 2


def define(trial):
    trial.suggest_float("lr", 1e-4, 1e-2, log=True)
    return {
        "model": "simple_cnn_10m",
        "image_size": 32,
        "batch_size": 16,
        "max_train_batches": 10,
        "balance": "original",
    }
