"""The replay benchmark's space (bench/replay.py): the seed study's two CNNs and its four balance
strategies, with the optimiser and augmentation searched the way spaces/transfer.py does, at a
size a 2-core CPU can record several seeds of (image size and steps come from the benchmark).

The hand study's eight CPU-sized settings (HAND_SETTINGS: both CNNs x four balances, Adam lr
1e-4, weight decay 5e-5, no augmentation) are recorded in the same table, so the replay compares
each searcher with them at equal compute. The study's ResNet50 row is left out: it trains at a
few images per second on such a CPU.
"""

from __future__ import annotations

METRIC = "val_precision"  # macro precision, the study's headline (validation split)
MODE = "max"
MAX_EPOCHS = 5  # epochs, = ASHA max_t in the replay
GRACE_PERIOD = 1  # epochs
REDUCTION_FACTOR = 3
NUM_SAMPLES = 24

MODELS = ["simple_cnn", "simple_cnn_10m"]
BALANCES = ["original", "undersample", "oversample", "class_weights"]
HAND = {"lr": 1e-4, "weight_decay": 5e-5, "augment": "none"}
HAND_SETTINGS = [{"model": m, "balance": b, **HAND} for m in MODELS for b in BALANCES]


def define(trial):
    trial.suggest_categorical("model", MODELS)
    trial.suggest_categorical("balance", BALANCES)
    trial.suggest_float("lr", 1e-5, 1e-2, log=True)
    trial.suggest_float("weight_decay", 1e-6, 1e-3, log=True)
    trial.suggest_categorical("augment", ["none", "seed", "geometric"])
    return {}
