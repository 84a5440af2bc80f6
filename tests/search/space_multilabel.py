"""A tiny multi-label space for the tests: mean AUROC, the uncertainty policy searched."""

from __future__ import annotations

METRIC = "val_mean_auroc"
MODE = "max"
MAX_EPOCHS = 2  # epochs
GRACE_PERIOD = 2  # no early stop: both trials reach the last epoch
NUM_SAMPLES = 2


def define(trial):
    trial.suggest_categorical("uncertainty", ["ones", "zeros"])
    trial.suggest_float("lr", 1e-3, 3e-3, log=True)
    return {
        "model": "simple_cnn_10m",
        "balance": "class_weights",
        "image_size": 32,
        "batch_size": 32,
        "max_train_batches": 3,
    }
