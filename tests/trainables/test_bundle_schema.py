"""A bundle's bundle.json and config.json are checked against their schema before any tensor
is read or a model is built: each bad field is refused in under a second, by name."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from trainables import bundle as bundle_module
from trainables.bundle import BUNDLE_META_FILE, CONFIG_FILE, load_bundle, save_bundle
from trainables.config import TrialConfig
from trainables.models import build_model

REPO = Path(__file__).resolve().parents[2]
CFG = TrialConfig(model="simple_cnn_10m", image_size=32, augment="none")

# case -> (file, dotted field, new value, words the error must hold)
BAD = {
    "classes-a-string": (BUNDLE_META_FILE, "classes", "NBV", "'classes' must be a list"),
    "one-class": (BUNDLE_META_FILE, "classes", ["NORMAL"], "at least 2"),
    "ansi-class": (
        BUNDLE_META_FILE,
        "classes",
        ["NORMAL", "\x1b[31mBACTERIA\x1b[0m", "VIRAL"],
        "'classes[1]' holds control characters",
    ),
    "repeated-class": (BUNDLE_META_FILE, "classes", ["A", "B", "A"], "repeats a name"),
    "empty-class": (BUNDLE_META_FILE, "classes", ["A", " ", "C"], "'classes[1]'"),
    "class-not-text": (BUNDLE_META_FILE, "classes", ["A", 3, "C"], "'classes[1]'"),
    "huge-size": (BUNDLE_META_FILE, "preprocessing.image_size", 3200, "[32, 1024]"),
    "size-text": (BUNDLE_META_FILE, "preprocessing.image_size", "64", "image_size"),
    "tiny-std": (BUNDLE_META_FILE, "preprocessing.std", 0.0001, "trained with 0.5"),
    "zero-std": (BUNDLE_META_FILE, "preprocessing.std", 0, "'preprocessing.std' must be a pos"),
    "negative-mean": (BUNDLE_META_FILE, "preprocessing.mean", -0.5, "'preprocessing.mean'"),
    "other-mean": (BUNDLE_META_FILE, "preprocessing.mean", 0.485, "trained with 0.5"),
    "resize-mode": (BUNDLE_META_FILE, "preprocessing.resize_mode", "zoom", "resize_mode"),
    "rgb": (BUNDLE_META_FILE, "preprocessing.grayscale", False, "grayscale"),
    "config-huge-size": (CONFIG_FILE, "image_size", 32000, "'image_size' 32000 is above"),
    "config-disagrees": (CONFIG_FILE, "image_size", 64, "disagrees with config.json"),
}


@pytest.fixture()
def good_bundle(tmp_path: Path) -> Path:
    model = build_model(CFG, num_classes=3).eval()
    classes = ["NORMAL", "BACTERIA", "VIRAL"]
    return save_bundle(tmp_path / "bundle", model, CFG, classes, {"val_acc": 0.5}, [])


def _edit(path: Path, field: str, value: object) -> None:
    data = json.loads(path.read_text())
    *parents, last = field.split(".")
    target = data
    for key in parents:
        target = target[key]
    target[last] = value
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_bundle_is_refused_by_field_before_a_model_is_built(
    case: str, good_bundle: Path, monkeypatch
) -> None:
    file, field, value, words = BAD[case]
    _edit(good_bundle / file, field, value)

    def must_not_run(*args, **kwargs):
        raise AssertionError("a model was built or weights were read before the check")

    monkeypatch.setattr(bundle_module, "build_model", must_not_run)
    monkeypatch.setattr(bundle_module, "load_file", must_not_run)
    started = time.perf_counter()
    with pytest.raises(ValueError) as refused:
        load_bundle(good_bundle)
    assert time.perf_counter() - started < 1.0  # seconds
    message = str(refused.value)
    assert words in message and "\x1b" not in message, message


def test_extra_fields_are_left_alone(good_bundle: Path) -> None:
    _edit(good_bundle / BUNDLE_META_FILE, "model_card", {"intended_use": "research"})
    loaded = load_bundle(good_bundle)
    assert loaded.extra["model_card"] == {"intended_use": "research"}
    x = torch.zeros(1, 1, 32, 32)
    assert loaded.model(x).shape == (1, 3)


def test_predict_cli_refuses_a_huge_bundle_in_one_line(good_bundle: Path, tmp_path: Path) -> None:
    _edit(good_bundle / CONFIG_FILE, "image_size", 3200)
    _edit(good_bundle / BUNDLE_META_FILE, "preprocessing.image_size", 3200)
    image = tmp_path / "x.png"
    image.write_bytes(b"not used: the bundle is refused first")
    proc = subprocess.run(
        [sys.executable, "-m", "analysis.predict", str(good_bundle), str(image)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "'preprocessing.image_size' must be an integer in [32, 1024]" in proc.stderr
