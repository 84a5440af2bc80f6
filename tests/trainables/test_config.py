"""TrialConfig: validation messages, coercion, round trips."""

from __future__ import annotations

import json

import numpy as np
import pytest

from trainables.augment import AUGMENTATIONS
from trainables.balance import BALANCES
from trainables.config import TrialConfig, field_names
from trainables.models import TORCHVISION_MODELS
from trainables.vocab import MODEL_NAMES


def test_defaults_are_valid_and_round_trip_through_to_dict():
    cfg = TrialConfig()
    assert TrialConfig.from_dict(cfg.to_dict()) == cfg  # what checkpoints store rebuilds it


def test_a_full_config_round_trips_through_json(tmp_path):
    cfg = TrialConfig(
        model="resnet50",
        balance="class_weights",
        augment="seed",
        frozen_depth=5,
        unfrozen_blocks=1,
        lr=3e-4,
        image_size=64,
    )
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg.to_dict()))
    assert TrialConfig.from_json(path) == cfg  # the CLI's --config path
    assert list(cfg.to_dict()) == field_names()


def test_unknown_keys_are_refused_with_the_valid_keys():
    with pytest.raises(ValueError, match=r"unknown TrialConfig keys \['learning_rate'\]") as err:
        TrialConfig.from_dict({"learning_rate": 0.1})
    assert "'lr'" in str(err.value) and "'balance'" in str(err.value)  # valid keys listed


@pytest.mark.parametrize(
    ("field", "registry"),
    # The built-in models: a plugin registered earlier in the same process is not a default.
    [("model", MODEL_NAMES), ("balance", BALANCES), ("augment", AUGMENTATIONS)],
)
def test_unknown_registry_values_name_the_field_and_choices(field, registry):
    with pytest.raises(ValueError, match=f"unknown {field} 'bogus'") as err:
        TrialConfig.from_dict({field: "bogus"})
    assert all(repr(choice) in str(err.value) for choice in registry)  # every choice listed


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"resize_mode": "stretch"}, r"unknown resize_mode 'stretch'.*'crop', 'pad'"),
        ({"data": "phantom:huge"}, r"unknown data .*huge.*'phantom:full', 'phantom:multilabel'"),
        ({"image_size": 100}, "image_size must be a multiple of 32"),
        ({"lr": 0.0}, r"lr must be in \(0, 10\]"),
        ({"frozen_depth": 6, "model": "resnet18"}, r"frozen_depth must be an integer in \[0, 5\]"),
        ({"batch_size": 2.5}, "batch_size must be an integer"),
        ({"pretrained": "yes"}, "pretrained must be true or false"),
        ({"lr": "fast"}, "lr must be a number"),
        ({"frozen_depth": 2}, r"apply only to \['densenet121', 'resnet18', 'resnet50'\]"),
        ({"model": "resnet18", "unfrozen_blocks": 1}, "unfrozen_blocks needs frozen_depth"),
    ],
)
def test_bad_values_name_the_field(values, message):
    with pytest.raises(ValueError, match=message):
        TrialConfig.from_dict(values)


def test_numbers_from_json_and_samplers_are_coerced():
    cfg = TrialConfig.from_dict(
        {"lr": 1, "weight_decay": 0, "batch_size": 16.0, "seed": np.int64(3), "val_fraction": 0.25}
    )
    assert isinstance(cfg.lr, float) and cfg.lr == 1.0  # an int for a float field
    assert isinstance(cfg.weight_decay, float)
    assert isinstance(cfg.batch_size, int) and cfg.batch_size == 16  # a whole float for an int
    assert type(cfg.seed) is int and cfg.seed == 3  # a numpy scalar from Optuna


def test_torchvision_options_are_accepted_for_every_backbone():
    for name in TORCHVISION_MODELS:
        cfg = TrialConfig(model=name, frozen_depth=5, unfrozen_blocks=1)
        assert (cfg.frozen_depth, cfg.unfrozen_blocks) == (5, 1)  # the seed's setting


def test_from_json_names_the_file_on_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        TrialConfig.from_json(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="broken.json is not valid JSON"):
        TrialConfig.from_json(broken)
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"modle": "resnet18"}))
    with pytest.raises(ValueError, match=r"unknown.json: unknown TrialConfig keys \['modle'\]"):
        TrialConfig.from_json(unknown)
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    with pytest.raises(ValueError, match="must hold a JSON object"):
        TrialConfig.from_json(listed)


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        TrialConfig().lr = 0.1  # a trial's config cannot drift after validation


def test_old_configs_pretrained_flag_reads_as_imagenet_weights():
    # configs, checkpoints and bundles written before `weights` existed stay loadable
    base = {"model": "resnet18", "image_size": 64}
    assert TrialConfig.from_dict({**base, "pretrained": True}).weights == "imagenet"
    assert TrialConfig.from_dict({**base, "pretrained": False}).weights == "none"
    assert TrialConfig.from_dict({**base, "pretrained": True, "weights": "imagenet"}).weights == (
        "imagenet"
    )
    with pytest.raises(ValueError, match="pretrained: true .* disagrees with weights 'none'"):
        TrialConfig.from_dict({**base, "pretrained": True, "weights": "none"})
    with pytest.raises(ValueError, match="unknown weights 'coco'"):
        TrialConfig.from_dict({**base, "weights": "coco"})
    with pytest.raises(ValueError, match="model 'simple_cnn' has no weights 'imagenet'"):
        TrialConfig.from_dict({"model": "simple_cnn", "pretrained": True})


def test_a_model_name_outside_the_registry_needs_a_plugin_or_timm():
    with pytest.raises(ValueError, match=r"unknown model 'my_net'.*timm:NAME.*plugin"):
        TrialConfig(model="my_net")
    assert TrialConfig(model="my_net", plugin="/somewhere/my_models.py").model == "my_net"
    assert TrialConfig(model="timm:convnext_nano", frozen_depth=2).frozen_depth == 2
    with pytest.raises(ValueError, match="must be a Python identifier"):
        TrialConfig(model="my-net", plugin="/somewhere/my_models.py")
