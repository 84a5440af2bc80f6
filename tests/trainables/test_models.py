"""The model registry: shapes, the seed's parameter counts, freezing, pretrained loading."""

from __future__ import annotations

import re

import pytest
import torch
import torchvision

from trainables.config import TrialConfig
from trainables.models import (
    MODELS,
    TORCHVISION_MODELS,
    build_model,
    count_parameters,
    feature_layer,
)
from trainables.models import main as models_cli

SMALL = 64  # pixels; every model accepts it and it keeps the CPU tests fast
TINY = 32  # pixels; the backward passes of the freezing tests (the backbones reach 1x1)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: these small models run faster alone than contending for 2 cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cfg(model: str, **kw) -> TrialConfig:
    return TrialConfig(model=model, image_size=kw.pop("image_size", SMALL), **kw)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_maps_a_gray_batch_to_class_logits(name):
    torch.manual_seed(0)
    model = build_model(_cfg(name)).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, SMALL, SMALL))
    assert out.shape == (2, 3)  # one logit per class for each image
    assert torch.isfinite(out).all()  # no NaN/inf from a fresh model


def test_registry_holds_the_seed_models_and_torchvision_backbones():
    # config validation and the sweep's spaces rely on these names
    assert {"simple_cnn", "simple_cnn_10m"} | TORCHVISION_MODELS <= set(MODELS)


@pytest.mark.parametrize(
    ("name", "expected"), [("simple_cnn", 134_953_603), ("simple_cnn_10m", 10_075_011)]
)
def test_seed_cnns_have_the_papers_parameter_count_at_256px(name, expected):
    with torch.device("meta"):  # 135M parameters without allocating them
        model = build_model(_cfg(name, image_size=256))
    assert count_parameters(model) == expected  # the seed's stated counts (sections 3.2, 5)


def test_simple_cnn_refuses_an_image_size_it_was_not_built_for():
    with pytest.raises(ValueError, match="built for 64 px images, got 32 px"):
        build_model(_cfg("simple_cnn"))(torch.zeros(1, 1, 32, 32))


def test_simple_cnn_flatten_size_follows_the_image_size():
    # 128 * (64 / 8)^2 inputs to fc1 at 64 px, not the seed's hard-coded 128 * 32 * 32
    assert build_model(_cfg("simple_cnn")).fc1.in_features == 128 * 8 * 8
    assert build_model(_cfg("simple_cnn_10m")).fc1.in_features == 512 * 2 * 2


def test_feature_layer_is_the_last_linear_with_penultimate_inputs():
    assert feature_layer(build_model(_cfg("simple_cnn"))).in_features == 512
    assert feature_layer(build_model(_cfg("simple_cnn_10m"))).in_features == 256
    head_last = feature_layer(build_model(_cfg("resnet18")))
    assert (head_last.in_features, head_last.out_features) == (512, 3)  # seed head 1024->512->3


def _stage_prefixes(name: str) -> list[list[str]]:
    """Parameter-name prefixes of [stem, stage1..4] under the Backbone wrapper."""
    if name.startswith("resnet"):
        return [["net.conv1.", "net.bn1."]] + [[f"net.layer{i}."] for i in range(1, 5)]
    f = "net.features."
    stages = [[f + "conv0.", f + "norm0."]]
    for i, tail in enumerate(["transition1.", "transition2.", "transition3.", "norm5."], 1):
        stages.append([f"{f}denseblock{i}.", f + tail])
    return stages


def _grads_after_backward(model: torch.nn.Module) -> dict[str, torch.Tensor | None]:
    model.train()
    model(torch.randn(2, 1, TINY, TINY)).sum().backward()
    return {n: p.grad for n, p in model.named_parameters()}


FREEZE_CASES = [("resnet18", d) for d in range(6)] + [
    ("resnet50", 2),
    ("resnet50", 5),
    ("densenet121", 1),
    ("densenet121", 5),
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "depth"), FREEZE_CASES)
def test_frozen_stages_get_no_gradient_and_the_rest_do(name, depth):
    torch.manual_seed(0)
    model = build_model(_cfg(name, frozen_depth=depth))
    frozen = tuple(p for stage in _stage_prefixes(name)[:depth] for p in stage)
    grads = _grads_after_backward(model)
    for param_name, grad in grads.items():
        if param_name.startswith(frozen):
            assert grad is None, param_name  # frozen: autograd never touches it
        else:
            assert grad is not None, param_name  # trainable, head included, gets a gradient


def test_seed_resnet50_setting_trains_exactly_layer4_block2_and_head():
    model = build_model(_cfg("resnet50", frozen_depth=5, unfrozen_blocks=1))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {
        n for n, _ in model.named_parameters() if n.startswith(("net.layer4.2.", "net.fc."))
    }
    assert trainable == expected  # the seed's section 3.2 fine-tuning, nothing more


def test_unfrozen_blocks_reopen_the_end_of_the_last_frozen_densenet_stage():
    model = build_model(_cfg("densenet121", frozen_depth=5, unfrozen_blocks=1))
    opened = ("net.features.denseblock4.denselayer16.", "net.features.norm5.")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    features = [n for n in trainable if n.startswith("net.features.")]
    # the last dense layer of block 4 and the final norm reopen together, nothing else
    assert all(n.startswith(opened) for n in features)
    assert {n.startswith(opened[1]) for n in features} == {True, False}  # both parts present
    assert any(n.startswith("net.classifier.") for n in trainable)  # the head always trains


def test_frozen_batchnorm_keeps_running_stats_in_training():
    model = build_model(_cfg("resnet18", frozen_depth=2))
    frozen_bn, open_bn = model.net.layer1[0].bn1, model.net.layer2[0].bn1
    before_frozen = frozen_bn.running_mean.clone()
    before_open = open_bn.running_mean.clone()
    model.train()
    model(torch.randn(2, 1, SMALL, SMALL) * 3 + 1)
    assert not frozen_bn.training  # frozen BN stays in eval mode under model.train()
    assert torch.equal(frozen_bn.running_mean, before_frozen)  # its statistics do not drift
    assert not torch.equal(open_bn.running_mean, before_open)  # trainable BN still updates
    assert not model.eval().net.layer2[0].bn1.training  # eval() still switches everything


def test_pretrained_loads_a_local_file_and_sums_rgb_filters(tmp_path):
    torch.manual_seed(1)
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18-local.pth"
    torch.save(reference.state_dict(), path)
    model = build_model(_cfg("resnet18", weights="imagenet", weights_path=str(path)))
    summed = reference.conv1.weight.sum(dim=1, keepdim=True)
    assert model.net.conv1.weight.shape == (64, 1, 7, 7)  # one input channel
    assert torch.allclose(model.net.conv1.weight, summed)  # gray = sum of RGB responses
    assert torch.equal(model.net.layer3[1].conv2.weight, reference.layer3[1].conv2.weight)


def test_pretrained_without_weights_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(ValueError, match="not on this machine.*resnet18-f37072fd.pth"):
        build_model(_cfg("resnet18", weights="imagenet"))  # never a silent random start
    missing = tmp_path / "nope.pth"
    with pytest.raises(ValueError, match="weights_path"):
        build_model(_cfg("resnet18", weights="imagenet", weights_path=str(missing)))


def test_pretrained_file_for_another_architecture_is_refused(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(ValueError, match="does not match torchvision's resnet50"):
        build_model(_cfg("resnet50", weights="imagenet", weights_path=str(path)))


def test_unknown_model_names_the_choices():
    cfg = _cfg("simple_cnn")
    object.__setattr__(cfg, "model", "vgg")  # bypass config validation to reach build_model
    with pytest.raises(ValueError, match="unknown model 'vgg'.*resnet18"):
        build_model(cfg)


def test_cli_lists_the_registry_with_counts(capsys):
    models_cli([])
    out = capsys.readouterr().out
    assert "134,953,603" in out and "10,075,011" in out  # seed counts printed
    assert "7,087,107" in out  # ResNet50 trainable parameters in the seed's frozen setting


def test_pretrained_densenet_accepts_torchvisions_old_key_names(tmp_path):
    # torchvision's published DenseNet file names dense-layer modules 'norm.1', 'conv.2', ...
    torch.manual_seed(2)
    reference = torchvision.models.densenet121(weights=None)
    old_style = {
        re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k): v
        for k, v in reference.state_dict().items()
    }
    assert "features.denseblock1.denselayer1.norm.1.weight" in old_style  # the renaming applied
    path = tmp_path / "densenet121-local.pth"
    torch.save(old_style, path)
    model = build_model(_cfg("densenet121", weights="imagenet", weights_path=str(path)))
    loaded = model.net.features.denseblock4.denselayer16.conv2.weight
    assert torch.equal(loaded, reference.features.denseblock4.denselayer16.conv2.weight)
    summed = reference.features.conv0.weight.sum(dim=1, keepdim=True)
    assert torch.allclose(model.net.features.conv0.weight, summed)
