"""The words every part of cxr-tune shares, each defined once.

Plain Python with no imports from the project (nor torch), so any module can import it without
an import cycle: `trainables.config` validates a `TrialConfig` against the names here without
importing the registries that implement them (`trainables.models`, `.balance`, `.augment`), and
those registries accept only these names (their tests check that both sides agree).
"""

from __future__ import annotations

import re

# ------------------------------------------------------------------------------------- classes

CLASSES = ("NORMAL", "BACTERIA", "VIRAL")
"""Canonical class names, in the order the seed reports them."""


def class_key(name: str) -> str:
    """The slug of a class name in metric keys and table columns: `VIRAL` -> `viral`
    (`val_acc_viral`, `prob_viral`). Lower case, runs of other characters become one '_'."""
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    if not slug:
        raise ValueError(f"class name {name!r} has no letters or digits for a metric key")
    return slug


# ------------------------------------------------------------------------------- preprocessing

RESIZE_MODES = ("pad", "crop")
"""Keep the aspect ratio by padding to a square or center-cropping (`TrialConfig.resize_mode`)."""
AMP_MODES = ("auto", "bf16", "fp32")
"""Numerics (`TrialConfig.amp`); `trainables.device.device_policy` says what each means."""
DATA_PLACEMENTS = ("auto", "resident", "stream")
"""Where the train split lives while training (`TrialConfig.data_on_device`)."""


def check_resize_mode(resize_mode: str) -> None:
    if resize_mode not in RESIZE_MODES:
        raise ValueError(
            f"unknown resize_mode {resize_mode!r}; expected one of {sorted(RESIZE_MODES)}"
        )


# ------------------------------------------------------------------------------------ phantoms

PHANTOM_PREFIX = "phantom:"
PHANTOM_PRESETS = ("small", "full")
"""Sizes of the synthetic dataset (`trainables.phantom.PRESETS` describes each)."""
MULTILABEL_PHANTOMS = ("multilabel", "multilabel_chexpert")
"""The multi-label phantom, as its NIH-style and its CheXpert-style manifest
(`trainables.phantom_multilabel.MANIFESTS`)."""


def parse_phantom(data: str) -> str | None:
    """The phantom preset `data` names (`phantom:small` -> `small`), or None for a folder path.

    An unknown preset is a ValueError naming the valid choices."""
    if not data.startswith(PHANTOM_PREFIX):
        return None
    preset = data[len(PHANTOM_PREFIX) :]
    if preset not in PHANTOM_PRESETS + MULTILABEL_PHANTOMS:
        choices = sorted(PHANTOM_PREFIX + p for p in PHANTOM_PRESETS + MULTILABEL_PHANTOMS)
        raise ValueError(f"unknown data {data!r}; expected a folder or one of {choices}")
    return preset


# ---------------------------------------------------------------------------------- registries

MODEL_NAMES = ("simple_cnn", "simple_cnn_10m", "resnet50", "resnet18", "densenet121")
"""Architectures; `trainables.models.MODELS` registers one builder under each, in this order."""
TORCHVISION_MODELS = frozenset({"resnet50", "resnet18", "densenet121"})
"""The models built on torchvision backbones: only they (and timm's) take freezing and weights."""
TIMM_PREFIX = "timm:"
"""`timm:NAME` is any `timm.create_model` name (the optional extra `timm`)."""

WEIGHTS: dict[str, str] = {
    "none": "random initialisation",
    "imagenet": "ImageNet-1k weights: torchvision's DEFAULT, or timm's default pretrained tag",
    "cxr": "chest X-ray weights: torchxrayvision's '-all' models (NIH, CheXpert, MIMIC, "
    "PadChest, ...; the optional extra `cxr`)",
}
"""Weight sets a backbone starts from (`TrialConfig.weights`); `trainables.weights` fetches them."""
MODEL_WEIGHTS: dict[str, tuple[str, ...]] = {
    "resnet18": ("none", "imagenet"),
    "resnet50": ("none", "imagenet", "cxr"),
    "densenet121": ("none", "imagenet", "cxr"),
}
"""The weight sets each built-in backbone has (timm models: none and imagenet)."""
CXR_WEIGHTS: dict[str, tuple[str, int]] = {
    "densenet121": ("densenet121-res224-all", 224),
    "resnet50": ("resnet50-res512-all", 512),
}
"""torchxrayvision's weight name and the input size (px) it was trained at, per backbone."""
CXR_SCALE = 1024.0
"""torchxrayvision's models take pixels scaled to [-1024, 1024]: mean 0.5, std 1 / 2048 on
[0, 1] pixels (`trainables.augment.normalization`)."""

BALANCES: dict[str, str] = {
    "original": "the training split as it is",
    "undersample": "every class sampled down to the minority count, re-drawn each epoch",
    "oversample": "every class sampled up to the majority count, re-drawn each epoch",
    "class_weights": "the training split as it is, with inverse-frequency loss weights",
}
"""Class balance strategies (seed section 1.3), implemented by `trainables.balance`."""

UNCERTAINTY_POLICIES: dict[str, str] = {
    "ignore": "U-Ignore: uncertain labels are left out of the loss",
    "ones": "U-Ones: uncertain labels count as positive",
    "zeros": "U-Zeros: uncertain labels count as negative",
}
"""What multi-label training does with a CheXpert-style uncertain (-1) label
(`TrialConfig.uncertainty`; `trainables.multilabel.train_targets`)."""

PER_FINDING_PREFIXES = ("val_auroc_", "val_ap_")
"""Multi-label data's per-finding validation metric keys: `val_auroc_<class_key(finding)>`."""


def check_label_separator(separator: str) -> None:
    """What may join findings in a multi-label manifest's column (`TrialConfig.label_separator`)."""
    if not isinstance(separator, str) or not separator.strip() or len(separator) > 3:
        raise ValueError(f"label_separator must be 1 to 3 characters, not blank, got {separator!r}")


AUGMENTATIONS: dict[str, str] = {
    "none": "no augmentation",
    "seed": "the seed's set (section 2): equalize (preprocessing), rotate, flip, shift",
    "equalize": "histogram equalization as preprocessing",
    "flip_rotate": "horizontal flip and rotation",
    "geometric": "rotation, shift and horizontal flip",
    "affine": "random affine (rotation, translation, scale, shear) and horizontal flip",
}
"""Names of the augmentation sets; `trainables.augment.AUGMENTATIONS` holds each recipe
(deterministic preprocessing + random ops)."""
