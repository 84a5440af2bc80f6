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


# The priors arm: spaces/transfer.py's knowledge, the learning rate kept within a decade of the
# study's 1e-4 and the study's recipe plus its two learning-rate neighbours tried first.
PRIOR_LR = (1e-5, 1e-3)
PRIOR_POINTS = [
    {"model": "simple_cnn", "balance": "oversample", **HAND, "lr": lr} for lr in (1e-4, 3e-5, 3e-4)
]


def define(trial, lr_range=(1e-5, 1e-2)):
    trial.suggest_categorical("model", MODELS)
    trial.suggest_categorical("balance", BALANCES)
    trial.suggest_float("lr", *lr_range, log=True)
    trial.suggest_float("weight_decay", 1e-6, 1e-3, log=True)
    trial.suggest_categorical("augment", ["none", "seed", "geometric"])
    return {}


def define_prior(trial):
    return define(trial, PRIOR_LR)
