"""The design card's sweep: balance, architecture, transfer depth, optimiser and augmentation.

Run it with `python -m search.run --space spaces/transfer.py` (`make run`). TPE samples
`define` once per trial; everything the trial does not sample comes from `TrialConfig`'s
defaults (the seed's batch 32, pad-to-square) or from the run (data, image size, epochs, seed).
"""

from __future__ import annotations

from trainables.augment import AUGMENTATIONS
from trainables.balance import BALANCES
from trainables.models import TORCHVISION_MODELS, weight_candidates

METRIC = "val_precision"  # macro precision, the seed's headline score (validation split)
MODE = "max"
MAX_EPOCHS = 12  # epochs, = ASHA max_t
GRACE_PERIOD = 2  # epochs before ASHA may stop a trial
REDUCTION_FACTOR = 3  # ASHA keeps the top 1/3 at each rung
NUM_SAMPLES = 48

MODELS = ["simple_cnn", "simple_cnn_10m", "resnet50", "resnet18", "densenet121"]
# The CPU profile (`make run` without a GPU) keeps the models that train an epoch in seconds.
CPU_CHOICES = {"model": ["simple_cnn", "simple_cnn_10m", "resnet18"]}
# ImageNet weights are never downloaded: `pretrained` is offered only for backbones whose
# torchvision weights are already in the torch hub cache when this file is imported.
PRETRAINED_AVAILABLE = frozenset(
    m for m in sorted(TORCHVISION_MODELS) if any(p.is_file() for p in weight_candidates(m))
)

# The seed study's two final recipes (its Table 3), tried first so the search starts from what
# the study knew: Adam lr 1e-4, weight decay 5e-5, the over-sampled set (its best balance,
# Table 1) and no augmentation (Tables 1 and 3 were trained without any). Its ResNet50 trains
# only layer4[2] and the head; ImageNet weights only where they are on disk (never downloaded).
SEED_RECIPE = {"balance": "oversample", "lr": 1e-4, "weight_decay": 5e-5, "augment": "none"}
POINTS_TO_EVALUATE = [
    {**SEED_RECIPE, "model": "simple_cnn"},
    {
        **SEED_RECIPE,
        "model": "resnet50",
        "frozen_depth": 5,
        "unfrozen_blocks": 1,
        **({"pretrained": True} if "resnet50" in PRETRAINED_AVAILABLE else {}),
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
        if model in PRETRAINED_AVAILABLE:
            trial.suggest_categorical("pretrained", [False, True])
    trial.suggest_float("lr", 1e-5, 1e-2, log=True)
    trial.suggest_float("weight_decay", 1e-6, 1e-3, log=True)
    trial.suggest_categorical("augment", sorted(AUGMENTATIONS))
    return {}
