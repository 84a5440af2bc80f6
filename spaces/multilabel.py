"""Multi-label data (NIH ChestX-ray14, CheXpert, MIMIC-CXR-JPG): searched on mean AUROC.

    python -m search.run --space spaces/multilabel.py --data nih.csv
    python -m search.run --space spaces/multilabel.py --data phantom:multilabel_chexpert

One sigmoid output per finding, binary cross-entropy (`trainables.multilabel`). The uncertainty
policy is searched, since which of U-Ignore / U-Ones / U-Zeros wins depends on the finding
(CheXpert, Irvin et al. 2019); balance is none or per-finding positive weights (resampling by
class has no meaning when an image holds several findings).
"""

from __future__ import annotations

from trainables.models import TORCHVISION_MODELS
from trainables.multilabel import DEFAULT_METRIC, DEFAULT_MODE, MULTILABEL_BALANCES
from trainables.vocab import UNCERTAINTY_POLICIES

METRIC = DEFAULT_METRIC  # val_mean_auroc: mean over findings with both classes in val
MODE = DEFAULT_MODE
MAX_EPOCHS = 12  # epochs, = ASHA max_t
GRACE_PERIOD = 2  # epochs before ASHA may stop a trial
REDUCTION_FACTOR = 3
NUM_SAMPLES = 32

MODELS = ["simple_cnn_10m", "resnet18", "densenet121", "resnet50"]  # DenseNet121: CheXNet's
WEIGHTS = ["none", "imagenet"]  # starting weights of the torchvision backbones
CPU_CHOICES = {"model": ["simple_cnn_10m", "resnet18"]}


def define(trial):
    trial.suggest_categorical("uncertainty", sorted(UNCERTAINTY_POLICIES))
    trial.suggest_categorical("balance", sorted(MULTILABEL_BALANCES))
    model = trial.suggest_categorical("model", MODELS)
    if model in TORCHVISION_MODELS:
        trial.suggest_categorical("weights", WEIGHTS)
    trial.suggest_float("lr", 1e-5, 1e-3, log=True)
    trial.suggest_float("weight_decay", 1e-6, 1e-3, log=True)
    return {}
