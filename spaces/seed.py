"""The seed study's own runs, to regenerate its Tables 1 to 5 (see the seed report).

Nine fixed settings, each tried once (POINTS_TO_EVALUATE, NUM_SAMPLES = 9) and trained to the
end (GRACE_PERIOD = MAX_EPOCHS, so ASHA stops nothing):

- Tables 1-2: the four balance strategies with SimpleCNN (134M) and, for Table 5, with the
  SimpleCNN (10M) as well;
- Table 3: ResNet50 fine-tuned the seed's way (everything frozen but layer4[2] and the head:
  frozen_depth=5, unfrozen_blocks=1) on the over-sampled set.

All use Adam lr 1e-4, weight decay 5e-5 and no augmentation: the study trained its four
datasets "without any data augmentation" (section 3.2.1), and Table 3's SimpleCNN row is Table
1's over-sampled one. Its augmentations (equalize, rotate ±10°, hflip, shift 10%; section 2,
`augment: seed`) are what `spaces/transfer.py` searches among. Table 4 (TTA) comes from
`analysis/` on the exported models.
"""

from __future__ import annotations

METRIC = "val_precision"
MODE = "max"
MAX_EPOCHS = 10  # epochs
GRACE_PERIOD = MAX_EPOCHS  # no early stopping: every setting is a table row
REDUCTION_FACTOR = 2

BALANCES = ["original", "undersample", "oversample", "class_weights"]
CNNS = ["simple_cnn", "simple_cnn_10m"]
SEED_RESNET = {
    "model": "resnet50",
    "frozen_depth": 5,
    "unfrozen_blocks": 1,
    "balance": "oversample",
}

POINTS_TO_EVALUATE = [{"model": m, "balance": b} for m in CNNS for b in BALANCES] + [
    {"model": "resnet50"}
]
NUM_SAMPLES = len(POINTS_TO_EVALUATE)


def define(trial):
    model = trial.suggest_categorical("model", CNNS + ["resnet50"])
    constants = {"lr": 1e-4, "weight_decay": 5e-5, "augment": "none", "batch_size": 32}
    if model == "resnet50":
        return {**constants, **SEED_RESNET}
    trial.suggest_categorical("balance", BALANCES)
    return constants
