"""Chest X-ray pretrained backbones against ImageNet's and random starts.

torchxrayvision's DenseNet-121 (`densenet121-res224-all`) and ResNet-50
(`resnet50-res512-all`), trained on NIH, CheXpert, MIMIC, PadChest and more, take 224 and 512 px
inputs scaled to [-1024, 1024]; the model applies that scaling itself and the bundle records it
(README, Pretrained weights). Needs the extra: `pip install cxr-tune[cxr]`. The driver downloads
every file once before the sweep.
"""

from __future__ import annotations

from trainables.balance import BALANCES
from trainables.vocab import CXR_WEIGHTS

METRIC = "val_precision"
MODE = "max"
MAX_EPOCHS = 12  # epochs, = ASHA max_t
GRACE_PERIOD = 2  # epochs before ASHA may stop a trial
NUM_SAMPLES = 24

WEIGHTS = ["none", "imagenet", "cxr"]  # all three exist for both backbones


def define(trial):
    trial.suggest_categorical("balance", sorted(BALANCES))
    model = trial.suggest_categorical("model", sorted(CXR_WEIGHTS))
    weights = trial.suggest_categorical("weights", WEIGHTS)
    depth = trial.suggest_int("frozen_depth", 0, 5)
    if depth:
        trial.suggest_int("unfrozen_blocks", 0, 1)
    trial.suggest_float("lr", 1e-5, 1e-2, log=True)
    trial.suggest_float("weight_decay", 1e-6, 1e-3, log=True)
    # torchxrayvision's weights were trained at one input size each: the trial uses it.
    return {"image_size": CXR_WEIGHTS[model][1]} if weights == "cxr" else {}
