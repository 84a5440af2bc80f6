"""bench/spaces/small_models.py for a 2-core CPU: only simple_cnn_10m (resnet18 trains at about
5 images/s at 64 px on such a CPU, which would turn a short-trial sweep into a long one).

Image size, epochs per trial and steps per epoch come from the benchmark's size (--size).
"""

from __future__ import annotations

# The same metric and ASHA settings as the GPU space; only the model choice differs.
from bench.spaces.small_models import (  # noqa: F401
    GRACE_PERIOD,
    MAX_EPOCHS,
    METRIC,
    MODE,
    NUM_SAMPLES,
    REDUCTION_FACTOR,
)


def define(trial):
    trial.suggest_categorical("balance", ["original", "oversample", "class_weights"])
    trial.suggest_float("lr", 1e-4, 1e-2, log=True)
    trial.suggest_float("weight_decay", 1e-6, 1e-3, log=True)
    trial.suggest_categorical("augment", ["none", "seed", "geometric"])
    return {"model": "simple_cnn_10m"}
