"""One typed configuration for a trial, end to end.

`TrialConfig` is what a space file suggests (suggest names are exactly the field names), what
`trainables.train` trains, what every checkpoint stores (`asdict(cfg)`) and what an exported bundle
carries in `config.json`, so a model can always be rebuilt from its files.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from trainables.classes import parse_class_map
from trainables.vocab import (
    AMP_MODES,
    AUGMENTATIONS,
    BALANCES,
    CXR_WEIGHTS,
    DATA_PLACEMENTS,
    MODEL_NAMES,
    MODEL_WEIGHTS,
    PHANTOM_PRESETS,
    RESIZE_MODES,
    TIMM_PREFIX,
    TORCHVISION_MODELS,
    UNCERTAINTY_POLICIES,
    WEIGHTS,
    check_label_separator,
    check_resize_mode,
    parse_phantom,
)

__all__ = ["AMP_MODES", "PHANTOM_PRESETS", "RESIZE_MODES", "TrialConfig", "field_names"]


@dataclass(frozen=True)
class TrialConfig:
    model: str = "simple_cnn_10m"
    """Architecture: a name of `trainables.vocab.MODEL_NAMES`, `timm:NAME` (any
    `timm.create_model` name, extra `timm`), or a name the `plugin` file registers."""
    balance: str = "oversample"
    """Class balance strategy, a key of `trainables.vocab.BALANCES` (seed section 1.3)."""
    augment: str = "none"
    """Training augmentation set, a key of `trainables.vocab.AUGMENTATIONS`."""
    frozen_depth: int = 0
    """How many of stem + 4 stages are frozen (0 to 5); torchvision backbones only."""
    unfrozen_blocks: int = 0
    """Blocks at the end of the last frozen stage left trainable. The seed's ResNet50 is
    frozen_depth=5, unfrozen_blocks=1 (everything frozen but layer4[2] and the head)."""
    weights: str = "none"
    """The weight set the backbone starts from, a key of `trainables.vocab.WEIGHTS`: none,
    imagenet (torchvision or timm) or cxr (torchxrayvision; needs its input size as image_size).
    Old configs' `pretrained: true` reads as `imagenet` (`from_dict`)."""
    weights_path: str = ""
    """The local file `weights` loads; empty means the library's own cache. A trial never
    downloads: the sweep's driver fetches every file first and sets this (`trainables.weights`)."""
    plugin: str = ""
    """A Python file that registers `model` with `trainables.models.register_model` (a user's
    own model); imported before the model is built, so trials and bundles can rebuild it."""
    lr: float = 1e-4
    """Adam learning rate (the seed's 1e-4)."""
    weight_decay: float = 5e-5
    """Adam weight decay (the seed's 5e-5)."""
    batch_size: int = 32
    """Training images per step."""
    epochs: int = 10
    """Epochs to train (the ASHA max_t when run by the sweep)."""
    image_size: int = 256
    """Square side after preprocessing, pixels; a multiple of 32 (both SimpleCNNs need it)."""
    resize_mode: str = "pad"
    """Keep the aspect ratio by padding to a square ('pad') or center-cropping ('crop')."""
    seed: int = 0
    """Seed for weights, sampling and augmentation."""
    split_seed: int = 0
    """Seed of the validation split, kept apart from `seed` so every trial sees the same split."""
    val_fraction: float = 0.2
    """Share of train held out for validation, stratified (and grouped by patient)."""
    data: str = "phantom:small"
    """An image-folder root, a pediatric `chest_xray` root, a CSV manifest (`.csv`), or
    `phantom:small` / `phantom:full` (README, Data)."""
    class_map: str = ""
    """Renames or merges the data's labels before they become classes: `seed` (every label that
    aliases a seed class merges into it, e.g. COVID and Viral Pneumonia -> VIRAL) or
    `LABEL=CLASS,LABEL=CLASS`; empty keeps every label (`trainables.classes`)."""
    label_separator: str = "|"
    """What joins findings in a multi-label manifest's `labels` / `Finding Labels` column
    (`trainables.multilabel`); NIH ChestX-ray14 uses '|'."""
    uncertainty: str = "ignore"
    """Multi-label data: what an uncertain (-1) label is in the loss, a key of
    `trainables.vocab.UNCERTAINTY_POLICIES` (CheXpert's U-Ignore, U-Ones, U-Zeros); which wins
    depends on the finding, so a space may search it. Single-label data ignores it."""
    amp: str = "auto"
    """Numerics: 'auto' is bf16 autocast + channels_last on CUDA and fp32 on CPU."""
    compile: bool = False
    """Wrap the model in torch.compile."""
    checkpoint_every: int = 1
    """Epochs between checkpoints handed to the reporter (the last epoch always gets one)."""
    checkpoint_epochs: tuple[int, ...] = ()
    """Epochs that always get a checkpoint besides every `checkpoint_every`-th and the last:
    the sweep passes ASHA's rung epochs, so a trial stopped at a rung ends on a checkpoint."""
    max_train_batches: int = 0
    """Cap on training steps per epoch, 0 for no cap (smoke tests and benchmarks)."""
    data_on_device: str = "auto"
    """Where the train split lives while training: 'auto' keeps it on the GPU when it fits the
    trial's share, else streams batches from the memory-mapped host copy; 'resident' or
    'stream' force one (`trainables.train.data_placement`; the sweep's --stream-data)."""

    def __post_init__(self) -> None:
        check_resize_mode(self.resize_mode)
        _check_choice("amp", self.amp, AMP_MODES)
        _check_choice("data_on_device", self.data_on_device, DATA_PLACEMENTS)
        _check_range("frozen_depth", self.frozen_depth, 0, 5)
        _check_range("unfrozen_blocks", self.unfrozen_blocks, 0, 3)
        _check_range("batch_size", self.batch_size, 1, 65536)
        _check_range("epochs", self.epochs, 1, 100000)
        _check_range("checkpoint_every", self.checkpoint_every, 1, 100000)
        _check_range("max_train_batches", self.max_train_batches, 0, 10**9)
        if not isinstance(self.checkpoint_epochs, (list, tuple)):
            raise ValueError(
                f"checkpoint_epochs must be a list of epochs, got {self.checkpoint_epochs!r}"
            )
        for epoch in self.checkpoint_epochs:
            _check_range("checkpoint_epochs[]", epoch, 1, 100000)
        # JSON and Ray hand over a list; a tuple keeps the frozen config hashable.
        object.__setattr__(self, "checkpoint_epochs", tuple(self.checkpoint_epochs))
        if not (0.0 < self.lr <= 10.0):
            raise ValueError(f"lr must be in (0, 10], got {self.lr!r}")
        if not (0.0 <= self.weight_decay <= 1.0):
            raise ValueError(f"weight_decay must be in [0, 1], got {self.weight_decay!r}")
        if not (0.0 < self.val_fraction < 1.0):
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction!r}")
        if self.image_size < 32 or self.image_size % 32:
            raise ValueError(
                f"image_size must be a multiple of 32 and at least 32, got {self.image_size!r}"
            )
        parse_phantom(self.data)
        parse_class_map(self.class_map)
        # The registries' names come from `vocab`, so this module never imports models (which
        # imports this one): there is no import cycle, and no torch import either.
        _check_model(self.model, self.plugin)
        _check_choice("balance", self.balance, BALANCES)
        _check_choice("augment", self.augment, AUGMENTATIONS)
        _check_choice("uncertainty", self.uncertainty, UNCERTAINTY_POLICIES)
        check_label_separator(self.label_separator)
        _check_weights(self)
        if self.unfrozen_blocks and not self.frozen_depth:
            raise ValueError(
                "unfrozen_blocks needs frozen_depth >= 1 (there is nothing to unfreeze)"
            )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrialConfig:
        """Build from a plain dict; unknown keys are refused with the list of valid ones."""
        valid = {f.name: f for f in fields(cls)}
        values = _legacy_pretrained(values)
        unknown = sorted(set(values) - set(valid))
        if unknown:
            raise ValueError(f"unknown TrialConfig keys {unknown}; valid keys are {sorted(valid)}")
        coerced = {k: _coerce(valid[k].type, k, v) for k, v in values.items()}
        return cls(**coerced)

    @classmethod
    def from_json(cls, path: str | Path) -> TrialConfig:
        path = Path(path)
        try:
            values = json.loads(path.read_text())
        except FileNotFoundError:
            raise ValueError(f"config file {path} does not exist") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"config file {path} is not valid JSON: {err}") from None
        if not isinstance(values, dict):
            raise ValueError(f"config file {path} must hold a JSON object")
        try:
            return cls.from_dict(values)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def field_names() -> list[str]:
    return [f.name for f in fields(TrialConfig)]


def _coerce(type_name: Any, key: str, value: Any) -> Any:
    """Accept what JSON and Optuna hand over (ints for floats, numpy scalars), refuse the rest."""
    kind = type_name if isinstance(type_name, str) else getattr(type_name, "__name__", "")
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()  # numpy scalar from a sampler
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise ValueError(f"{key} must be true or false, got {value!r}")
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ValueError(f"{key} must be an integer, got {value!r}")
        return int(value)
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{key} must be a number, got {value!r}")
        return float(value)
    if kind == "str":
        if not isinstance(value, str):
            raise ValueError(f"{key} must be a string, got {value!r}")
        return value
    return value


def _legacy_pretrained(values: dict[str, Any]) -> dict[str, Any]:
    """Configs written before `weights` existed say `pretrained: true|false`. The rule:
    `pretrained: true` means `weights: imagenet` (the only pretrained weights there were);
    `pretrained: false` adds nothing; both keys disagreeing is refused."""
    if "pretrained" not in values:
        return values
    values = dict(values)
    legacy = values.pop("pretrained")
    if hasattr(legacy, "item"):
        legacy = legacy.item()
    if not isinstance(legacy, bool):
        raise ValueError(f"pretrained must be true or false, got {legacy!r}")
    if legacy:
        if values.get("weights", "imagenet") != "imagenet":
            raise ValueError(
                f"pretrained: true (read as weights 'imagenet') disagrees with weights "
                f"{values['weights']!r}; keep only weights"
            )
        values["weights"] = "imagenet"
    return values


def _check_model(model: str, plugin: str) -> None:
    if model in MODEL_NAMES:
        return
    if model.startswith(TIMM_PREFIX) and len(model) > len(TIMM_PREFIX):
        return
    if not plugin and model:
        raise ValueError(
            f"unknown model {model!r}; expected one of {sorted(MODEL_NAMES)}, "
            f"'{TIMM_PREFIX}NAME' (a timm model) or a model a plugin file registers (plugin)"
        )
    if not model.isidentifier():
        raise ValueError(f"model {model!r} must be a Python identifier (a builder's name)")


def _check_weights(cfg: TrialConfig) -> None:
    """Freezing and weights only where the model has stages and weight sets; cxr weights at the
    input size they were trained at."""
    _check_choice("weights", cfg.weights, WEIGHTS)
    timm = cfg.model.startswith(TIMM_PREFIX)
    plugin = cfg.model not in MODEL_NAMES and not timm
    backbone = cfg.model in TORCHVISION_MODELS or timm
    if not backbone and not plugin and (cfg.frozen_depth or cfg.unfrozen_blocks):
        raise ValueError(
            f"frozen_depth and unfrozen_blocks apply only to {sorted(TORCHVISION_MODELS)} and "
            f"timm models; model {cfg.model!r} takes neither"
        )
    offered = ("none", "imagenet") if timm else MODEL_WEIGHTS.get(cfg.model, ("none",))
    if cfg.weights not in offered:
        raise ValueError(
            f"model {cfg.model!r} has no weights {cfg.weights!r}; expected one of {list(offered)}"
        )
    if cfg.weights == "cxr":
        name, size = CXR_WEIGHTS[cfg.model]
        if cfg.image_size != size:
            raise ValueError(
                f"weights 'cxr' of {cfg.model} (torchxrayvision's {name}) take {size} px "
                f"inputs; set image_size={size} (got {cfg.image_size})"
            )


def _check_choice(name: str, value: Any, choices: Any) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {sorted(choices)}")


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not (low <= value <= high):
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
