"""load_dataset end to end: unreadable files, classes that cannot train, bad arguments, the test
split read only on request, the report, the tensors, the phantom."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from image_folders import BAD_KINDS, S, make_folder, write_bad
from PIL import Image

from trainables import data
from trainables.config import TrialConfig
from trainables.data import DATASET_FIELDS, dataset_key, load_dataset
from trainables.vocab import CLASSES

pytestmark = pytest.mark.usefixtures("cold_cache")


def test_unreadable_files_are_skipped_and_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    root = make_folder(tmp_path / "d")
    bad = {kind: write_bad(kind, root / "train" / "NORMAL" / f"x_{kind}.png") for kind in BAD_KINDS}
    ds = load_dataset(str(root), image_size=S)
    reasons = {s["path"]: s["reason"] for s in ds.report.skipped}
    for kind, path in bad.items():
        rel = path.relative_to(root).as_posix()
        # Each bad file is counted with its reason, never dropped silently.
        assert BAD_KINDS[kind] in reasons[rel], (kind, reasons.get(rel))
        assert rel not in ds.train.paths + ds.val.paths
    assert len(ds.train) + len(ds.val) == 70  # every good image still loaded
    assert "x_zero_byte.png" in ds.report.format()
    # A warm load reports the same skipped files without decoding anything.
    again = load_dataset(str(root), image_size=S)
    assert again.decoded == 0
    assert {s["path"] for s in again.report.skipped} == set(reasons)


def test_class_with_only_unreadable_images_refuses_to_start(tmp_path):
    root = make_folder(tmp_path / "d")
    for f in (root / "train" / "VIRAL").iterdir():
        f.write_bytes(b"")
    with pytest.raises(
        ValueError, match="class VIRAL has no readable images in the train split"
    ) as err:
        load_dataset(str(root), image_size=S)
    assert "zero-byte" in str(err.value)  # the refusal says why the images were unreadable


def test_class_that_cannot_fill_both_splits_refuses_to_start(tmp_path):
    # One VIRAL patient: either train or val ends up without VIRAL.
    root = make_folder(tmp_path / "d", counts={"NORMAL": 20, "BACTERIA": 20, "VIRAL": 2})
    with pytest.raises(ValueError, match="class VIRAL has no images in the (train|val) split"):
        load_dataset(str(root), image_size=S)


def test_bad_arguments_name_the_valid_choices(tmp_path):
    root = make_folder(tmp_path / "d")
    with pytest.raises(ValueError, match=r"resize_mode 'stretch'.*\['crop', 'pad'\]"):
        load_dataset(str(root), image_size=S, resize_mode="stretch")
    with pytest.raises(ValueError, match="phantom:small"):
        load_dataset("phantom:huge", image_size=S)
    with pytest.raises(ValueError, match="val_fraction"):
        load_dataset(str(root), image_size=S, val_fraction=1.0)


def test_include_test_false_never_opens_test_images(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "d")
    opened: list[str] = []
    real_open = Image.open

    def spy(fp, *args, **kwargs):
        opened.append(str(fp))
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", spy)
    ds = load_dataset(str(root), image_size=S)
    assert ds.test is None and ds.split_record["test"] == []
    assert opened and not any("/test/" in p for p in opened)  # train read, test untouched
    assert "test" not in ds.report.counts
    with_test = load_dataset(str(root), image_size=S, include_test=True)
    assert len(with_test.test) == 9 and with_test.decoded == 9  # train came from the cache


def test_report_formats_a_table_and_serialises(tmp_path):
    root = make_folder(tmp_path / "d")
    (root / "train" / "NORMAL" / "empty.png").write_bytes(b"")
    ds = load_dataset(str(root), image_size=S, include_test=True)
    text = ds.report.format()
    assert "NORMAL" in text and "BACTERIA" in text and "VIRAL" in text
    assert "train/NORMAL/empty.png: " in text and "zero-byte" in text
    as_json = json.loads(json.dumps(ds.report.to_dict()))
    assert as_json["counts"]["test"] == {"NORMAL": 3, "BACTERIA": 3, "VIRAL": 3}
    assert sum(as_json["counts"]["train"].values()) == len(ds.train)
    assert [s["path"] for s in as_json["skipped"]] == ["train/NORMAL/empty.png"]
    assert "zero-byte" in as_json["skipped"][0]["reason"]


def test_split_tensors_have_the_contracted_shapes(tmp_path):
    ds = load_dataset(str(make_folder(tmp_path / "d")), image_size=S)
    for split in (ds.train, ds.val):
        assert split.images.dtype == torch.uint8 and split.images.shape[1:] == (1, S, S)
        assert split.labels.dtype == torch.int64 and len(split.labels) == len(split.paths)
        assert len(split.patients) == len(split.paths)


def test_phantom_small_loads_through_ensure_phantom(monkeypatch):
    # The suite's shared cache (see conftest), so the phantom is generated once per checkout.
    monkeypatch.setenv("CXR_TUNE_CACHE", str(Path(__file__).parents[2] / ".cache" / "test-cache"))
    ds = data.load_dataset("phantom:small", image_size=S)
    assert ds.classes == list(CLASSES)
    assert not set(ds.train.patients) & set(ds.val.patients)  # phantom patients are grouped
    assert ds.report.counts["train"]["BACTERIA"] > ds.report.counts["train"]["NORMAL"]


def test_dataset_key_changes_with_exactly_the_fields_that_change_the_dataset():
    cfg = TrialConfig()
    # Training settings share one loaded dataset ...
    assert dataset_key(replace(cfg, lr=0.5, model="resnet18", seed=3)) == dataset_key(cfg)
    # ... and each data field gives another (the Ray trainable and the report cache by it).
    changed = {"data": "/x", "image_size": 64, "resize_mode": "crop", "split_seed": 1}
    changed.update(val_fraction=0.3, class_map="seed", label_separator=";")
    assert set(changed) == set(DATASET_FIELDS)
    for name, value in changed.items():
        assert dataset_key(replace(cfg, **{name: value})) != dataset_key(cfg), name
