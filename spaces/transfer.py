"""The design card's sweep: balance, architecture, transfer depth, starting weights, optimiser
and augmentation.

Run it with `python -m search.run --space spaces/transfer.py` (`make run`). TPE samples
`define` once per trial; everything the trial does not sample comes from `TrialConfig`'s
defaults (the seed's batch 32, pad-to-square) or from the run (data, image size, epochs, seed).

The torchvision backbones start from random weights or ImageNet's: the driver downloads each
ImageNet file once, into the torch hub cache, before any trial starts (README, Pretrained
weights). The choices are the same on every machine, whatever its cache holds.
"""

from __future__ import annotations

from trainables.augment import AUGMENTATIONS
from trainables.balance import BALANCES
from trainables.models import TORCHVISION_MODELS

METRIC = "val_precision"  # macro precision, the seed's headline score (validation split)
MODE = "max"
MAX_EPOCHS = 12  # epochs, = ASHA max_t
GRACE_PERIOD = 2  # epochs before ASHA may stop a trial
REDUCTION_FACTOR = 3  # ASHA keeps the top 1/3 at each rung
NUM_SAMPLES = 48

MODELS = ["simple_cnn", "simple_cnn_10m", "resnet50", "resnet18", "densenet121"]
# Starting weights of the backbones. One list for every model: Optuna keeps one list of choices
# per name. Chest X-ray weights (torchxrayvision, `pip install cxr-tune[cxr]`) exist for
# densenet121 and resnet50 only: spaces/cxr.py searches them.
WEIGHTS = ["none", "imagenet"]
# The CPU profile (`make run` without a GPU) keeps the models that train an epoch in seconds.
CPU_CHOICES = {"model": ["simple_cnn", "simple_cnn_10m", "resnet18"]}

# The seed study's two final recipes (its Table 3), tried first so the search starts from what
# the study knew: Adam lr 1e-4, weight decay 5e-5, the over-sampled set (its best balance,
# Table 1) and no augmentation (Tables 1 and 3 were trained without any). Its ResNet50 started
# from torchvision's ImageNet weights (section 3.3) and trains only layer4[2] and the head.
SEED_RECIPE = {"balance": "oversample", "lr": 1e-4, "weight_decay": 5e-5, "augment": "none"}
# Its neighbours next: the recipe's learning rate a half-decade either side, where the replay
# table found the best CPU-sized models (bench/RESULTS.md, replay benchmark).
NEIGHBOURS = [{**SEED_RECIPE, "model": "simple_cnn", "lr": lr} for lr in (3e-5, 3e-4)]
POINTS_TO_EVALUATE = [
    {**SEED_RECIPE, "model": "simple_cnn"},
    *NEIGHBOURS,
    {
        **SEED_RECIPE,
        "model": "resnet50",
        "frozen_depth": 5,
        "unfrozen_blocks": 1,
        "weights": "imagenet",
    },
]


def define(trial):
    trial.suggest_categorical("balance", sorted(BALANCES))
    model = trial.suggest_categorical("model", MODELS)
    if model in TORCHVISION_MODELS:
        # How many of stem + 4 stages stay frozen; 0 trains the whole backbone.
        depth = trial.suggest_int("frozen_depth", 0, 5)
        if depth:
            trial.suggest_int("unfrozen_blocks", 0, 1)
        trial.suggest_categorical("weights", WEIGHTS)
    # Adam's learning rate. Above 1e-3 these models collapse to predicting one class: in the
    # replay table every trial above 1e-3 ended at a mean validation precision of 0.30-0.37
    # (single-class level), against 0.53-0.63 at 2e-5 to 1e-4 (bench/RESULTS.md). The
    # study trained at 1e-4; the range stays a decade below and above it.
    trial.suggest_float("lr", 1e-5, 1e-3, log=True)
    trial.suggest_float("weight_decay", 1e-6, 1e-3, log=True)
    trial.suggest_categorical("augment", sorted(AUGMENTATIONS))
    return {}
