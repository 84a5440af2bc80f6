"""Tiny and fast: the 10M SimpleCNN on small images for a few epochs (tests and CPU checks)."""

from __future__ import annotations

METRIC = "val_loss"  # continuous, so ASHA never faces ties between trials
MODE = "min"
MAX_EPOCHS = 3  # epochs
GRACE_PERIOD = 1
REDUCTION_FACTOR = 2
NUM_SAMPLES = 6


def define(trial):
    trial.suggest_float("lr", 1e-5, 1e-2, log=True)
    trial.suggest_categorical("balance", ["original", "oversample"])
    return {"model": "simple_cnn_10m", "image_size": 32, "batch_size": 16, "max_train_batches": 4}
