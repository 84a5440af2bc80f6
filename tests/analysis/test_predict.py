"""analysis.predict applies the preprocessing its bundle records, so a bundle's model sees the
pixels it was trained and validated on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from analysis.predict import main as predict_main
from analysis.predict import predict_files, preprocessing_ops_of
from trainables.bundle import load_bundle, save_bundle
from trainables.config import TrialConfig
from trainables.data import decode_file, load_for_config
from trainables.models import build_model
from trainables.train import predict_proba

REPO = Path(__file__).resolve().parents[2]
CLASSES = ["NORMAL", "BACTERIA", "VIRAL"]


@pytest.fixture(scope="module")
def files():
    root = load_for_config(TrialConfig(image_size=32, data="phantom:small")).root
    return (
        sorted((root / "test" / "VIRAL").iterdir())[:4]
        + sorted((root / "test" / "NORMAL").iterdir())[:4]
    )


def _bundle(tmp_path, augment: str):
    cfg = TrialConfig(model="simple_cnn_10m", image_size=32, augment=augment)
    torch.manual_seed(0)
    model = build_model(cfg, len(CLASSES)).eval()
    return save_bundle(tmp_path / "bundle", model, cfg, CLASSES, {}, []), model, cfg


def _probs(rows) -> np.ndarray:
    return np.array([[r["probabilities"][c] for c in CLASSES] for r in rows])


@pytest.mark.parametrize("augment", ["seed", "equalize", "geometric"])
def test_predict_applies_the_recorded_preprocessing(tmp_path, files, augment):
    path, model, cfg = _bundle(tmp_path, augment)
    meta = json.loads((path / "bundle.json").read_text())
    expected_ops = ["equalize"] if augment in ("seed", "equalize") else []
    assert meta["preprocessing"]["ops"] == expected_ops  # recorded in the bundle
    rows = predict_files(load_bundle(path), files)
    images = torch.from_numpy(np.stack([decode_file(f, 32, "pad") for f in files])).unsqueeze(1)
    # Exactly what validation computes for this config (train.evaluate -> predict_proba).
    validated = predict_proba(model, images, "cpu", cfg=cfg).double().numpy()
    np.testing.assert_allclose(_probs(rows), validated, rtol=0, atol=1e-6)
    if expected_ops:
        plain = predict_proba(model, images, "cpu", preprocess=()).double().numpy()
        assert not np.allclose(_probs(rows), plain, atol=1e-4)  # equalization really matters


def test_recorded_ops_that_disagree_with_the_config_are_refused(tmp_path, files):
    path, _, _ = _bundle(tmp_path, "seed")
    meta = json.loads((path / "bundle.json").read_text())
    meta["preprocessing"]["ops"] = []
    (path / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"preprocessing.ops \[\] disagrees with .*'seed'"):
        predict_files(load_bundle(path), files)
    meta["preprocessing"]["ops"] = ["rotate"]
    (path / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"\['rotate'\] are not deterministic"):
        predict_files(load_bundle(path), files)


def test_bundle_without_recorded_ops_is_read_as_validated_on_plain_pixels(tmp_path):
    path, _, _ = _bundle(tmp_path, "seed")
    meta = json.loads((path / "bundle.json").read_text())
    del meta["preprocessing"]["ops"]  # as exported before the field existed
    (path / "bundle.json").write_text(json.dumps(meta))
    # Such bundles' models were validated without equalization, so none is applied.
    assert preprocessing_ops_of(load_bundle(path)) == ()


@pytest.mark.slow
def test_predict_reports_every_file_of_good_broken_missing_and_folder_inputs(
    tmp_path, files, capsys
):
    path, _, _ = _bundle(tmp_path, "geometric")
    good = files[0]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a PNG at all")
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.png").write_bytes(files[1].read_bytes())
    (folder / "sub" / "b.png").write_bytes(files[2].read_bytes())
    (folder / "notes.txt").write_text("not an image")
    missing = tmp_path / "gone.png"
    args = [str(path), str(good), str(broken), str(folder), str(missing), "--json"]
    proc = subprocess.run(
        [sys.executable, "-m", "cxr_tune", "predict", *args, "--device", "cpu"],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    # Some files were skipped: exit status 1, and no traceback.
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    out = json.loads(proc.stdout)
    predicted = [r["image"] for r in out["predictions"]]
    # The good file and the folder's two images (recursively, sorted) have predictions.
    assert predicted == [str(good), str(folder / "a.png"), str(folder / "sub" / "b.png")]
    skipped = {r["image"]: r["reason"] for r in out["skipped"]}
    assert skipped == {
        str(broken): "not an image file Pillow can identify",
        str(missing): "missing file",
    }
    assert "3 file(s) predicted, 2 skipped" in proc.stderr
    assert "notes.txt" in proc.stderr  # the folder's other file is named, not predicted
    # A skipped file changes nothing for the others: same probabilities as the good ones alone.
    alone = predict_files(load_bundle(path), [good, folder / "a.png", folder / "sub" / "b.png"])
    np.testing.assert_allclose(_probs(out["predictions"]), _probs(alone), rtol=0, atol=1e-6)
    # Every file predicted: exit status 0; the table gives each file its line.
    assert predict_main([str(path), str(good), str(folder), "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    assert str(folder / "sub" / "b.png") in table and "skipped" not in table
    assert predict_main([str(path), str(broken), "--device", "cpu"]) == 1
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith(str(broken)))
    assert "skipped" in line and "not an image file Pillow can identify" in line
