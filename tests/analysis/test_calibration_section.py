"""Calibration in the report and in predict: T comes from validation only, predict applies it."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from analysis.calibration import calibrate_model
from analysis.predict import predict_files
from trainables.bundle import load_bundle, save_bundle, temperature_of
from trainables.calibration import scaled_probs
from trainables.config import TrialConfig
from trainables.data import load_for_config
from trainables.train import train_model

CFG = TrialConfig(
    model="simple_cnn_10m",
    image_size=32,
    batch_size=16,
    epochs=2,
    max_train_batches=6,
    data="phantom:small",
)


@pytest.fixture(scope="module")
def trained():
    """A briefly trained 32 px model (its last checkpoint's weights) and its data with test."""
    data = load_for_config(CFG, include_test=True)
    return train_model(CFG, dataset=data, device="cpu"), data


def test_temperature_is_fitted_on_validation_and_poisoned_test_changes_nothing(trained):
    model, data = trained
    cal = calibrate_model(model, CFG, data, "cpu")
    # Poisoned test split: inverted pixels, labels shifted by one class.
    test = replace(data.test, images=255 - data.test.images, labels=(data.test.labels + 1) % 3)
    poisoned = calibrate_model(model, CFG, replace(data, test=test), "cpu")
    assert poisoned.temperature == cal.temperature
    # The poison reached the test scores (so the test above could have failed).
    assert not np.allclose(poisoned.test_logits, cal.test_logits)
    # The same poison on validation moves T: the fit really reads validation.
    val = replace(data.val, images=255 - data.val.images, labels=(data.val.labels + 1) % 3)
    moved = calibrate_model(model, CFG, replace(data, val=val), "cpu")
    assert abs(moved.temperature - cal.temperature) > 1e-3
    table = cal.table()
    assert list(table["split"]) == ["val", "val", "test", "test"]
    # T minimises validation NLL, so scaled NLL on validation is never worse than T = 1.
    val_nll = table[table["split"] == "val"].set_index("scaling")["nll"]
    assert val_nll["temperature"] <= val_nll["none"] + 1e-12


def test_predict_applies_the_bundles_temperature(trained, tmp_path):
    model, data = trained
    root = data.root
    files = [str(root / p) for p in data.val.paths[:4]]
    plain = save_bundle(tmp_path / "plain", model, CFG, data.classes, {}, [])
    scaled = save_bundle(
        tmp_path / "scaled",
        model,
        CFG,
        data.classes,
        {},
        [],
        extra={"calibration": {"temperature": 2.0, "fitted_on": "val"}},
    )
    assert temperature_of(load_bundle(plain)) == 1.0
    assert temperature_of(load_bundle(scaled)) == 2.0
    base = predict_files(load_bundle(plain), files)
    calibrated = predict_files(load_bundle(scaled), files)
    for b, c in zip(base, calibrated, strict=True):
        p = np.array([list(b["probabilities"].values())])
        expected = scaled_probs(np.log(p), 2.0)[0]
        # softmax(logits / 2) is softmax(log p / 2); the class never changes.
        np.testing.assert_allclose(list(c["probabilities"].values()), expected, atol=1e-5)
        assert b["class"] == c["class"]


def test_a_bad_temperature_in_bundle_json_is_refused(trained, tmp_path):
    model, data = trained
    bad = save_bundle(
        tmp_path / "bad",
        model,
        CFG,
        data.classes,
        {},
        [],
        extra={"calibration": {"temperature": 0}},
    )
    with pytest.raises(ValueError, match="calibration.temperature must be a positive number"):
        load_bundle(bad)
