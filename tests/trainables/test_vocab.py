"""The shared vocabulary: class keys, the phantom prefix, and registries that agree with it."""

from __future__ import annotations

import pytest

from trainables import vocab
from trainables.augment import OPS
from trainables.metrics import classification_metrics
from trainables.models import MODELS, register_model


def test_class_key_is_the_lower_case_slug_of_the_class_name():
    assert [vocab.class_key(c) for c in vocab.CLASSES] == ["normal", "bacteria", "viral"]
    # Other characters collapse to one underscore, so a key is always a metric-name fragment.
    assert vocab.class_key("Viral Pneumonia (COVID-19)") == "viral_pneumonia_covid_19"
    with pytest.raises(ValueError, match="no letters or digits"):
        vocab.class_key("--")


def test_metric_keys_use_class_key():
    metrics = classification_metrics([0, 1, 2], [0, 1, 2], vocab.CLASSES, "val")
    per_class = {f"val_acc_{vocab.class_key(c)}" for c in vocab.CLASSES}
    assert per_class <= set(metrics)  # the per-class keys search/space.py accepts as METRIC


@pytest.mark.parametrize(
    ("data", "preset"),
    [("phantom:small", "small"), ("phantom:full", "full"), ("/data/chest_xray", None)],
)
def test_parse_phantom_tells_presets_from_folders(data, preset):
    assert vocab.parse_phantom(data) == preset


def test_unknown_phantom_preset_names_every_valid_one():
    with pytest.raises(ValueError) as err:
        vocab.parse_phantom("phantom:huge")
    assert str(err.value) == (
        "unknown data 'phantom:huge'; expected a folder or one of ['phantom:full', "
        "'phantom:multilabel', 'phantom:multilabel_chexpert', 'phantom:small']"
    )


def test_resize_mode_check_names_the_choices():
    vocab.check_resize_mode("pad")
    with pytest.raises(ValueError, match=r"unknown resize_mode 'stretch'.*\['crop', 'pad'\]"):
        vocab.check_resize_mode("stretch")


def test_model_registry_starts_with_exactly_the_vocab_names_in_order():
    # TrialConfig accepts vocab.MODEL_NAMES; each must have a builder. Users' own models
    # (plugins) are registered after the built-in ones.
    assert tuple(MODELS)[: len(vocab.MODEL_NAMES)] == vocab.MODEL_NAMES
    assert vocab.TORCHVISION_MODELS <= set(vocab.MODEL_NAMES)


def test_a_new_name_registers_but_a_taken_name_is_refused():
    def made_up_net(cfg, num_classes=3):  # pragma: no cover - never built
        raise AssertionError

    register_model(made_up_net)
    try:
        assert MODELS["made_up_net"] is made_up_net
        register_model(made_up_net)  # the same builder again (a file imported twice) is fine
    finally:
        del MODELS["made_up_net"]

    def resnet18(cfg, num_classes=3):  # pragma: no cover - never built
        raise AssertionError

    # another builder under a built-in name would silently replace it: refused
    with pytest.raises(ValueError, match="'resnet18' is registered twice"):
        register_model(resnet18)
    assert MODELS["resnet18"] is not resnet18


def test_every_augmentation_set_names_existing_ops():
    from trainables.augment import AUGMENTATIONS

    # the names config checks (vocab) and the recipes (augment) are the same sets
    assert set(vocab.AUGMENTATIONS) == set(AUGMENTATIONS)
    unknown = {k: [op for op in s.ops if op not in OPS] for k, s in AUGMENTATIONS.items()}
    assert not any(unknown.values()), unknown
