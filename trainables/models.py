"""The model registry: the seed's two CNNs and torchvision backbones with the seed's head.

`build_model(cfg)` is the one entry point. Torchvision backbones take one input channel, end in
the seed's 3-layer head (in_features -> 1024 -> ReLU -> 512 -> ReLU -> num_classes), and freeze
`cfg.frozen_depth` of their five stages [stem, stage1, stage2, stage3, stage4]:

- ResNet: stem = conv1 + bn1, stages = layer1..layer4, blocks = the residual blocks of a layer.
- DenseNet: stem = conv0 + norm0, stage i = denseblock_i + transition_i (stage 4 = denseblock4 +
  norm5), blocks = the dense layers; the transition (or norm5) goes with the stage's last block.

`cfg.unfrozen_blocks` leaves that many blocks at the end of the last frozen stage trainable
(capped at the stage's length; the stem is one block). The seed's ResNet50 is frozen_depth=5,
unfrozen_blocks=1: only layer4[2] and the head train. The head always trains.

Frozen BatchNorm layers stay in eval mode during training (`Backbone.train` puts them back), so
their running statistics keep the values they were frozen with instead of drifting to the batch.

`pretrained=True` loads torchvision's ImageNet weights from `cfg.weights_path` or the torch hub
cache, never from the network, and makes the first convolution one-channel by summing its RGB
filters (a gray image x gives the same response as the RGB image (x, x, x)).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torch.nn.modules.batchnorm import _BatchNorm

from trainables.config import TrialConfig
from trainables.vocab import MODEL_NAMES, TORCHVISION_MODELS

ModelBuilder = Callable[[TrialConfig, int], nn.Module]
MODELS: dict[str, ModelBuilder] = {}
SEED_FROZEN = {"frozen_depth": 5, "unfrozen_blocks": 1}  # the seed's ResNet50 fine-tuning


def register_model(fn: ModelBuilder) -> ModelBuilder:
    """Add a builder `fn(cfg, num_classes) -> nn.Module` to MODELS under its function name."""
    if fn.__name__ in MODELS:
        raise ValueError(f"model {fn.__name__!r} is registered twice")
    if fn.__name__ not in MODEL_NAMES:
        # TrialConfig validates against vocab.MODEL_NAMES: a model missing there is unusable.
        raise ValueError(f"model {fn.__name__!r} is not in trainables.vocab.MODEL_NAMES")
    MODELS[fn.__name__] = fn
    return fn


def build_model(cfg: TrialConfig, num_classes: int = 3) -> nn.Module:
    """The model `cfg` describes, with freezing and pretrained weights applied."""
    if cfg.model not in MODELS:
        raise ValueError(f"unknown model {cfg.model!r}; expected one of {sorted(MODELS)}")
    return MODELS[cfg.model](cfg, num_classes)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def feature_layer(model: nn.Module) -> nn.Linear:
    """The final nn.Linear; its input is the penultimate features (the seed's t-SNE layer)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer")
    return linears[-1]


# --- the seed's own CNNs ---------------------------------------------------------------------


def _check_size(image_size: int, multiple: int, name: str) -> None:
    if image_size < multiple or image_size % multiple:
        raise ValueError(f"{name} needs image_size a multiple of {multiple}, got {image_size}")


def _check_input(x: torch.Tensor, image_size: int) -> None:
    """The flatten size is fixed at build time, so say so instead of a matmul shape error."""
    if x.shape[-2:] != (image_size, image_size):
        raise ValueError(
            f"model built for {image_size} px images, got {x.shape[-1]} px "
            f"(input shape {tuple(x.shape)}); rebuild it with that image_size"
        )


class SimpleCNN(nn.Module):
    """The seed's SimpleCNN (section 3.1.1): 134,953,603 parameters at 256 px. The flatten size
    128 * (S / 8)^2 follows the image size (the seed hard-coded 128 * 32 * 32 for S = 256)."""

    def __init__(self, num_classes: int = 3, image_size: int = 256) -> None:
        super().__init__()
        _check_size(image_size, 8, "simple_cnn")
        self.image_size = image_size
        self.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3)
        self.bn1 = nn.BatchNorm2d(64)
        self.pool1 = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(64, 128, kernel_size=5, padding=2)
        self.bn2 = nn.BatchNorm2d(128)
        self.pool2 = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.fc1 = nn.Linear(128 * (image_size // 8) ** 2, 1024)
        self.fc2 = nn.Linear(1024, 512)
        self.fc3 = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.image_size)
        x = self.pool1(F.relu(self.bn1(self.conv1(x))))
        x = self.pool2(F.relu(self.bn2(self.conv2(x))))
        x = x.flatten(1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class SimpleCNN10M(nn.Module):
    """The seed's test_SimpleCNN (section 5): 10,075,011 parameters at 256 px; flatten size
    512 * (S / 32)^2."""

    def __init__(self, num_classes: int = 3, image_size: int = 256) -> None:
        super().__init__()
        _check_size(image_size, 32, "simple_cnn_10m")
        self.image_size = image_size
        self.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3)
        self.bn1 = nn.BatchNorm2d(64)
        self.pool1 = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(64, 128, kernel_size=5, padding=2)
        self.bn2 = nn.BatchNorm2d(128)
        self.pool2 = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(128, 256, kernel_size=3, padding=1)
        self.bn3 = nn.BatchNorm2d(256)
        self.pool3 = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.conv4 = nn.Conv2d(256, 512, kernel_size=3, padding=1)
        self.bn4 = nn.BatchNorm2d(512)
        self.pool4 = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.fc1 = nn.Linear(512 * (image_size // 32) ** 2, 256)
        self.fc2 = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.image_size)
        x = self.pool1(F.relu(self.bn1(self.conv1(x))))
        x = self.pool2(F.relu(self.bn2(self.conv2(x))))
        x = self.pool3(F.relu(self.bn3(self.conv3(x))))
        x = self.pool4(F.relu(self.bn4(self.conv4(x))))
        x = x.flatten(1)
        x = F.relu(self.fc1(x))
        return self.fc2(x)


@register_model
def simple_cnn(cfg: TrialConfig, num_classes: int = 3) -> nn.Module:
    return SimpleCNN(num_classes, cfg.image_size)


@register_model
def simple_cnn_10m(cfg: TrialConfig, num_classes: int = 3) -> nn.Module:
    return SimpleCNN10M(num_classes, cfg.image_size)


# --- torchvision backbones -------------------------------------------------------------------


class Backbone(nn.Module):
    """A torchvision network (`self.net`) whose frozen BatchNorm layers stay in eval mode.

    `model.train()` sets every BatchNorm whose parameters are all frozen back to eval, so a frozen
    stage behaves the same in training and evaluation and its running statistics never update.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        if mode:
            for module in self.modules():
                params = list(module.parameters(recurse=False))
                if (
                    isinstance(module, _BatchNorm)
                    and params
                    and not any(p.requires_grad for p in params)
                ):
                    module.eval()
        return self


def seed_head(in_features: int, num_classes: int) -> nn.Sequential:
    """The seed's classifier head (section 3.2): in -> 1024 -> ReLU -> 512 -> ReLU -> classes."""
    return nn.Sequential(
        nn.Linear(in_features, 1024),
        nn.ReLU(),
        nn.Linear(1024, 512),
        nn.ReLU(),
        nn.Linear(512, num_classes),
    )


_WEIGHTS = {
    "resnet18": torchvision.models.ResNet18_Weights,
    "resnet50": torchvision.models.ResNet50_Weights,
    "densenet121": torchvision.models.DenseNet121_Weights,
}
# Old torchvision DenseNet checkpoints name dense-layer modules 'norm.1' etc. (torchvision's own
# densenet._load_state_dict renames them the same way; num_batches_tracked too, for files saved
# by a newer torch).
_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
    r"((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


def weight_candidates(name: str) -> list[Path]:
    """Files in the torch hub cache that may hold torchvision's ImageNet weights for `name`,
    the default weights first."""
    enum = _WEIGHTS[name]
    ordered = [enum.DEFAULT] + [w for w in enum if w != enum.DEFAULT]
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    return [checkpoints / Path(w.url).name for w in ordered]


def _read_state_dict(name: str, weights_path: str) -> tuple[dict[str, torch.Tensor], Path]:
    if weights_path:
        candidates = [Path(weights_path).expanduser()]
    else:
        candidates = weight_candidates(name)
    found = next((path for path in candidates if path.is_file()), None)
    if found is None:
        urls = ", ".join(w.url for w in _WEIGHTS[name])
        raise ValueError(
            f"pretrained {name} weights not found; looked in {[str(p) for p in candidates]}. "
            f"Nothing is downloaded at run time: copy torchvision's file ({urls}) into "
            f"{Path(torch.hub.get_dir()) / 'checkpoints'} or set weights_path to a local file"
        )
    try:
        if found.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(found))
        else:
            state = torch.load(found, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable file gets the same message naming it
        raise ValueError(f"cannot read {name} weights from {found}: {err}") from None
    if not isinstance(state, dict):
        raise ValueError(f"{found} does not hold a state_dict (got {type(state).__name__})")
    renamed = {}
    for key, value in state.items():
        match = _DENSENET_KEY.match(key)
        renamed[match.group(1) + match.group(2) if match else key] = value
    return renamed, found


def _load_pretrained(net: nn.Module, name: str, weights_path: str) -> None:
    """Load ImageNet weights into the 3-channel, 1000-class network."""
    state, path = _read_state_dict(name, weights_path)
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{path} does not match torchvision's {name}: {err}") from None


def _gray_conv(conv: nn.Conv2d, sum_rgb: bool) -> nn.Conv2d:
    """A one-channel copy of `conv`: RGB filters summed (pretrained) or freshly initialised."""
    gray = nn.Conv2d(
        1,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        bias=conv.bias is not None,
    )
    if sum_rgb:
        with torch.no_grad():
            gray.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
            if conv.bias is not None:
                gray.bias.copy_(conv.bias)
    return gray


def _resnet_stages(net: nn.Module) -> list[list[list[nn.Module]]]:
    """[stem, layer1..4], each a list of blocks, each block a list of modules."""
    stem = [[net.conv1, net.bn1]]
    layers = (net.layer1, net.layer2, net.layer3, net.layer4)
    return [stem] + [[[block] for block in layer] for layer in layers]


def _densenet_stages(net: nn.Module) -> list[list[list[nn.Module]]]:
    f = net.features
    stages = [[[f.conv0, f.norm0]]]
    tails = [f.transition1, f.transition2, f.transition3, f.norm5]
    for i, tail in enumerate(tails, start=1):
        blocks = [[layer] for layer in getattr(f, f"denseblock{i}").children()]
        blocks[-1].append(tail)  # the transition (or final norm) goes with the last dense layer
        stages.append(blocks)
    return stages


def _freeze(stages: list[list[list[nn.Module]]], frozen_depth: int, unfrozen_blocks: int) -> None:
    frozen = stages[:frozen_depth]
    for stage in frozen:
        for block in stage:
            for module in block:
                module.requires_grad_(False)
    if frozen and unfrozen_blocks:
        for block in frozen[-1][-unfrozen_blocks:]:
            for module in block:
                module.requires_grad_(True)


def _torchvision_model(cfg: TrialConfig, num_classes: int) -> nn.Module:
    name = cfg.model
    net = getattr(torchvision.models, name)(weights=None)
    if cfg.pretrained:
        _load_pretrained(net, name, cfg.weights_path)
    if name.startswith("resnet"):
        net.conv1 = _gray_conv(net.conv1, sum_rgb=cfg.pretrained)
        net.fc = seed_head(net.fc.in_features, num_classes)
        stages = _resnet_stages(net)
    else:
        net.features.conv0 = _gray_conv(net.features.conv0, sum_rgb=cfg.pretrained)
        net.classifier = seed_head(net.classifier.in_features, num_classes)
        stages = _densenet_stages(net)
    _freeze(stages, cfg.frozen_depth, cfg.unfrozen_blocks)
    return Backbone(net)


@register_model
def resnet50(cfg: TrialConfig, num_classes: int = 3) -> nn.Module:
    return _torchvision_model(cfg, num_classes)


@register_model
def resnet18(cfg: TrialConfig, num_classes: int = 3) -> nn.Module:
    return _torchvision_model(cfg, num_classes)


@register_model
def densenet121(cfg: TrialConfig, num_classes: int = 3) -> nn.Module:
    return _torchvision_model(cfg, num_classes)


def main(argv: list[str] | None = None) -> int:
    """Print the registry with parameter counts at 256 px (built on the meta device: no memory)."""
    from trainables.cli import models_parser

    models_parser().parse_args(argv)
    print(f"{'model':<16}{'parameters':>14}{'trainable (seed frozen)':>26}")
    for name in MODELS:
        with torch.device("meta"):
            total = count_parameters(build_model(TrialConfig(model=name, image_size=256)))
            trainable = "-"
            if name in TORCHVISION_MODELS:
                frozen = build_model(TrialConfig(model=name, image_size=256, **SEED_FROZEN))
                trainable = f"{count_parameters(frozen, trainable_only=True):,}"
        print(f"{name:<16}{total:>14,}{trainable:>26}")
    print(
        "seed frozen = frozen_depth=5, unfrozen_blocks=1 (ResNet50: only layer4[2] and the head "
        "train); 1 input channel, 3 classes"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
