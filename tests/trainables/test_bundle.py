"""Exported bundles: round trip, and every way a bundle can be broken gives a clear error."""

from __future__ import annotations

import json

import pytest
import torch

from trainables.bundle import BUNDLE_META_FILE, CONFIG_FILE, WEIGHTS_FILE, load_bundle, save_bundle
from trainables.config import TrialConfig
from trainables.models import build_model

CFG = TrialConfig(model="simple_cnn_10m", image_size=32, augment="none")
CLASSES = ["NORMAL", "BACTERIA", "VIRAL"]


@pytest.fixture()
def bundle_dir(tmp_path):
    torch.manual_seed(0)
    model = build_model(CFG, num_classes=3).eval()
    out = save_bundle(tmp_path / "bundle", model, CFG, CLASSES, {"val_acc": 0.5}, [{"epoch": 1.0}])
    return out, model


def test_bundle_round_trip_gives_identical_outputs(bundle_dir):
    path, model = bundle_dir
    bundle = load_bundle(path)
    x = torch.randn(4, 1, 32, 32)
    # Same weights, same config, same classes and preprocessing as written.
    assert torch.equal(bundle.model(x), model(x))
    assert bundle.cfg == CFG and bundle.classes == CLASSES
    assert bundle.preprocessing["image_size"] == 32 and bundle.preprocessing["mean"] == 0.5
    assert bundle.metrics == {"val_acc": 0.5}


def test_saving_again_replaces_the_bundle_atomically(bundle_dir):
    path, model = bundle_dir
    save_bundle(path, model, CFG, CLASSES, {"val_acc": 0.75}, [])
    assert load_bundle(path).metrics["val_acc"] == 0.75
    # No staging directories are left beside the bundle.
    assert sorted(p.name for p in path.parent.iterdir()) == ["bundle"]


def test_bad_json_is_named(bundle_dir):
    path, _ = bundle_dir
    (path / BUNDLE_META_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="bundle.json is not valid JSON"):
        load_bundle(path)


def test_missing_weights_are_named(bundle_dir):
    path, _ = bundle_dir
    (path / WEIGHTS_FILE).unlink()
    with pytest.raises(ValueError, match="no weights file"):
        load_bundle(path)


def test_weights_of_the_wrong_shape_are_named(bundle_dir):
    path, _ = bundle_dir
    cfg = json.loads((path / CONFIG_FILE).read_text())
    cfg["image_size"] = 64  # the saved fc1 was sized for 32 px
    (path / CONFIG_FILE).write_text(json.dumps(cfg))
    meta = json.loads((path / BUNDLE_META_FILE).read_text())
    meta["preprocessing"]["image_size"] = 64  # both files agree: only the weights do not fit
    (path / BUNDLE_META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="wrong shapes"):
        load_bundle(path)


def test_a_pickle_is_not_accepted_as_weights(bundle_dir):
    path, model = bundle_dir
    torch.save(model.state_dict(), path / WEIGHTS_FILE)
    with pytest.raises(ValueError, match="cannot be read as safetensors"):
        load_bundle(path)


def test_a_missing_directory_is_named(tmp_path):
    with pytest.raises(ValueError, match="is not a directory"):
        load_bundle(tmp_path / "nope")
