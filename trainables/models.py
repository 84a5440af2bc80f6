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

`cfg.weights` picks the starting weights (`trainables.weights` finds the local file; nothing
is downloaded here): `imagenet` loads torchvision's ImageNet weights and makes the first
convolution one-channel by summing its RGB filters (a gray image x gives the same response as the
RGB image (x, x, x)); `cxr` loads torchxrayvision's one-channel chest X-ray backbone, whose
inputs are scaled to [-1024, 1024]: the model's first op (`InputScale`) multiplies the seed's
[-1, 1] input by 1024, so every caller (training, TTA, predict, ONNX) feeds it unchanged. The
pretrained head is always replaced by the seed's head.

`timm:NAME` builds `timm.create_model(NAME, in_chans=1, num_classes=0)` with the seed's head;
its frozen_depth k freezes every parameter up to the end of the k-th entry of the model's
`feature_info` (for a ResNet: act1 = the stem, layer1..layer4), and unfrozen_blocks leaves the
last blocks (children) of that entry's module trainable.

A user's own model: a Python file calls `register_model` on a builder `fn(cfg, num_classes)`;
`cfg.plugin` names the file, which `build_model` imports (`load_plugin`) before it looks the
name up, so trials, the GPU measurement, export and bundles rebuild it from config.json.
"""

from __future__ import annotations

import contextvars
import hashlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from trainables.config import TrialConfig
from trainables.vocab import CXR_SCALE, MODEL_NAMES, TIMM_PREFIX, TORCHVISION_MODELS
from trainables.weights import local_file, read_state_dict, read_xrv_state

ModelBuilder = Callable[[TrialConfig, int], nn.Module]
MODELS: dict[str, ModelBuilder] = {}
SEED_FROZEN = {"frozen_depth": 5, "unfrozen_blocks": 1}  # the seed's ResNet50 fine-tuning


def register_model(fn: ModelBuilder) -> ModelBuilder:
    """Add a builder `fn(cfg, num_classes) -> nn.Module` to MODELS under its function name.

    A name may be registered again only by the same function of the same file (a plugin or
    space file imported twice); a built-in name or another builder's name is refused."""
    name = fn.__name__
    if name.startswith(TIMM_PREFIX) or not name.isidentifier():
        raise ValueError(f"model name {name!r} must be a Python identifier")
    if name in MODELS and _origin(MODELS[name]) != _origin(fn):
        raise ValueError(
            f"model {name!r} is registered twice ({_origin(MODELS[name])} and {_origin(fn)})"
        )
    MODELS[name] = fn
    return fn


def _origin(fn: Callable) -> str:
    return f"{inspect.getsourcefile(fn)}:{fn.__qualname__}"


def model_source(cfg: TrialConfig) -> dict[str, str]:
    """How to rebuild `cfg.model` from files: built-in, timm, or the plugin file (path, SHA-256)
    and builder name. ValueError when it cannot be rebuilt from a file (registered in a
    session that no file records)."""
    if cfg.model in MODEL_NAMES:
        return {"kind": "builtin", "model": cfg.model}
    if cfg.model.startswith(TIMM_PREFIX):
        import timm

        return {"kind": "timm", "model": cfg.model, "timm": timm.__version__}
    path = Path(cfg.plugin)
    if not path.is_file():
        raise ValueError(
            f"model {cfg.model!r} cannot be rebuilt: its plugin file {cfg.plugin!r} is missing"
        )
    module = load_plugin(cfg.plugin)
    builder = MODELS.get(cfg.model)
    if builder is None or Path(inspect.getsourcefile(builder) or "") != Path(module.__file__):
        raise ValueError(
            f"model {cfg.model!r} cannot be rebuilt: {cfg.plugin} does not register it "
            f"(register_model in that file)"
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"kind": "plugin", "model": cfg.model, "plugin": str(path), "sha256": digest}


_PLUGINS: dict[str, object] = {}


def load_plugin(path: str) -> object:
    """Import a user's model file once per process (it calls `register_model`)."""
    resolved = str(Path(path).expanduser().resolve())
    if resolved in _PLUGINS:
        return _PLUGINS[resolved]
    if not Path(resolved).is_file():
        raise ValueError(f"plugin file {path} does not exist")
    tag = hashlib.sha256(resolved.encode()).hexdigest()[:8]
    name = f"cxr_plugin_{Path(resolved).stem}_{tag}"
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise ValueError(f"plugin file {path} is not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # pickling and torch.onnx find its classes by module name
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # any import-time error of user code
        del sys.modules[name]
        raise ValueError(f"plugin file {path} does not load: {type(err).__name__}: {err}") from err
    _PLUGINS[resolved] = module
    return module


# False while a model is rebuilt for weights that come next (checkpoint, bundle): the pretrained
# file is not read, but the architecture (e.g. cxr's InputScale) is the one `cfg.weights` gives.
_LOAD_WEIGHTS: contextvars.ContextVar[bool] = contextvars.ContextVar("load_weights", default=True)


def build_model(cfg: TrialConfig, num_classes: int = 3, load_weights: bool = True) -> nn.Module:
    """The model `cfg` describes, with freezing and (unless `load_weights` is False, for a
    model whose trained weights are loaded next) its pretrained weights applied."""
    token = _LOAD_WEIGHTS.set(load_weights)
    try:
        if cfg.model.startswith(TIMM_PREFIX):
            return timm_model(cfg, num_classes)
        if cfg.plugin:
            load_plugin(cfg.plugin)
        if cfg.model not in MODELS:
            where = f" (plugin {cfg.plugin})" if cfg.plugin else ""
            raise ValueError(
                f"unknown model {cfg.model!r}{where}; expected one of {sorted(MODELS)}"
            )
        return MODELS[cfg.model](cfg, num_classes)
    finally:
        _LOAD_WEIGHTS.reset(token)


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


# Old torchvision DenseNet checkpoints name dense-layer modules 'norm.1' etc. (torchvision's own
# densenet._load_state_dict renames them the same way; num_batches_tracked too, for files saved
# by a newer torch).
_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
    r"((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


class InputScale(nn.Module):
    """Multiplies the input by a constant: the seed's [-1, 1] input times 1024 is the
    [-1024, 1024] scaling torchxrayvision's weights were trained on."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def _renamed(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    renamed = {}
    for key, value in state.items():
        match = _DENSENET_KEY.match(key)
        renamed[match.group(1) + match.group(2) if match else key] = value
    return renamed


def _load_imagenet(net: nn.Module, cfg: TrialConfig) -> None:
    """Load ImageNet weights into the 3-channel, 1000-class network."""
    path = local_file(cfg.model, cfg.weights, cfg.weights_path)
    try:
        net.load_state_dict(_renamed(read_state_dict(path)))
    except RuntimeError as err:
        raise ValueError(f"{path} does not match torchvision's {cfg.model}: {err}") from None


def _load_cxr(net: nn.Module, cfg: TrialConfig) -> None:
    """Load torchxrayvision's backbone into the one-channel network, its head left out."""
    path = local_file(cfg.model, cfg.weights, cfg.weights_path)
    head = "fc." if cfg.model.startswith("resnet") else "classifier."
    state = {k: v for k, v in read_xrv_state(cfg.model, path).items() if not k.startswith(head)}
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(head)]
    if missing or unexpected:
        raise ValueError(
            f"{path} does not match {cfg.model}'s backbone: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )


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
    import torchvision  # here, not at import: only torchvision backbones pay its start-up

    net = getattr(torchvision.models, name)(weights=None)
    load = _LOAD_WEIGHTS.get()
    if cfg.weights == "imagenet" and load:
        _load_imagenet(net, cfg)
    imagenet = cfg.weights == "imagenet" and load
    if name.startswith("resnet"):
        net.conv1 = _gray_conv(net.conv1, sum_rgb=imagenet)
        net.fc = seed_head(net.fc.in_features, num_classes)
        stages = _resnet_stages(net)
    else:
        net.features.conv0 = _gray_conv(net.features.conv0, sum_rgb=imagenet)
        net.classifier = seed_head(net.classifier.in_features, num_classes)
        stages = _densenet_stages(net)
    if cfg.weights == "cxr" and load:
        _load_cxr(net, cfg)
    _freeze(stages, cfg.frozen_depth, cfg.unfrozen_blocks)
    if cfg.weights == "cxr":
        return Backbone(nn.Sequential(InputScale(CXR_SCALE), net))
    return Backbone(net)


# --- timm backbones (the optional extra `timm`) ------------------------------------------------


def timm_model(cfg: TrialConfig, num_classes: int) -> nn.Module:
    """`timm:NAME` with one input channel and the seed's head; imagenet weights from the local
    file the driver fetched (timm sums the RGB filters of the first convolution for in_chans=1)."""
    from trainables.weights import import_timm

    timm = import_timm(cfg.model)
    name = cfg.model[len(TIMM_PREFIX) :]
    kwargs: dict = {"in_chans": 1, "num_classes": 0}
    if cfg.weights == "imagenet" and _LOAD_WEIGHTS.get():
        path = local_file(cfg.model, cfg.weights, cfg.weights_path)
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    try:
        body = timm.create_model(name, **kwargs)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"timm cannot build {cfg.model!r}: {err}") from None
    _freeze_timm(body, cfg)
    return Backbone(nn.Sequential(body, seed_head(body.num_features, num_classes)))


def _freeze_timm(body: nn.Module, cfg: TrialConfig) -> None:
    """frozen_depth k: every parameter registered before the end of feature_info[k-1]'s module
    is frozen; unfrozen_blocks: that module's last children stay trainable."""
    if not cfg.frozen_depth:
        return
    info = [entry["module"] for entry in getattr(body, "feature_info", [])]
    if cfg.frozen_depth > len(info):
        raise ValueError(
            f"{cfg.model} has {len(info)} feature stages {info}; frozen_depth "
            f"{cfg.frozen_depth} exceeds them"
        )
    last = info[cfg.frozen_depth - 1]
    names = [n for n, _ in body.named_parameters()]
    inside = [i for i, n in enumerate(names) if n.startswith(last + ".")]
    # a parameter-free entry (timm's act1) ends where the next parameter after it begins
    end = inside[-1] if inside else _params_before(body, last) - 1
    for i, (_, param) in enumerate(body.named_parameters()):
        if i <= end:
            param.requires_grad_(False)
    if cfg.unfrozen_blocks:
        stage = body.get_submodule(last)
        for block in list(stage.children())[-cfg.unfrozen_blocks :]:
            block.requires_grad_(True)


def _params_before(body: nn.Module, module_name: str) -> int:
    """How many parameters come before the module after `module_name` in registration order."""
    count = 0
    for name, module in body.named_modules():
        if name == module_name:
            return count
        count += len(list(module.parameters(recurse=False)))
    raise ValueError(f"module {module_name!r} not found")


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
    """Print the built-in models with parameter counts at 256 px (built on the meta device: no
    memory). A plugin's models need their file: they are not listed here."""
    from trainables.cli import models_parser

    models_parser().parse_args(argv)
    print(f"{'model':<16}{'parameters':>14}{'trainable (seed frozen)':>26}")
    for name in MODEL_NAMES:
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
