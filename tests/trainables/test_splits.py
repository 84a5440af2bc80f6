"""The validation split: grouped by patient, stratified, seeded, recorded by hash."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from image_folders import S, make_folder, make_pediatric, noise

from trainables.data import load_dataset
from trainables.splits import split_hash, split_train_val

pytestmark = pytest.mark.usefixtures("cold_cache")


def test_no_patient_is_in_two_splits(tmp_path):
    make_pediatric(tmp_path, patients=60)
    for seed in range(3):
        ds = load_dataset(str(tmp_path), image_size=S, split_seed=seed)
        train_patients, val_patients = set(ds.train.patients), set(ds.val.patients)
        assert val_patients and not train_patients & val_patients  # grouped by patient
        # Patient ids come from the names: person<ID>_ and IM-<ID>.
        assert "1" in train_patients | val_patients and "IM-0003" in train_patients | val_patients


def test_stratification_is_roughly_preserved(tmp_path):
    root = make_folder(tmp_path / "d", counts={"NORMAL": 40, "BACTERIA": 80, "VIRAL": 20})
    ds = load_dataset(str(root), image_size=S)
    n_val = len(ds.val)
    assert 0.15 <= n_val / 140 <= 0.25  # about val_fraction = 0.2 of train
    val_share = torch.bincount(ds.val.labels, minlength=3).float() / n_val
    train_share = torch.bincount(ds.train.labels, minlength=3).float() / len(ds.train)
    # Class shares in val are within 5 points of train's (2:4:1).
    assert torch.allclose(val_share, train_share, atol=0.05), (val_share, train_share)


def test_split_without_patient_ids_is_stratified_shuffle(tmp_path):
    root = make_folder(tmp_path / "d", counts={"NORMAL": 20, "BACTERIA": 40, "VIRAL": 20})
    for f in list((root / "train").rglob("*.png")):
        f.rename(f.with_name(f.name.replace("person", "img")))  # no ids in the names
    ds = load_dataset(str(root), image_size=S)
    assert len(ds.val) == 16  # exactly 20%
    assert torch.bincount(ds.val.labels, minlength=3).tolist() == [4, 8, 4]
    assert len(set(ds.train.patients)) == len(ds.train)  # each file its own group


def test_split_record_is_stable_across_loads_and_seeded(tmp_path):
    root = make_folder(tmp_path / "d")
    a = load_dataset(str(root), image_size=S)
    b = load_dataset(str(root), image_size=64, resize_mode="crop")
    c = load_dataset(str(root), image_size=S, split_seed=1)
    # Same files and seed give the same split whatever the preprocessing: a report can prove it.
    assert a.split_record == b.split_record
    assert a.split_record["val"] == sorted(a.val.paths)
    assert c.split_record["hash"] != a.split_record["hash"]  # split_seed changes the split
    assert sorted(a.split_record["train"] + a.split_record["val"]) == sorted(
        c.split_record["train"] + c.split_record["val"]
    )
    assert (
        load_dataset(str(root), image_size=S, include_test=True).split_record["hash"]
        == (a.split_record["hash"])
    )  # reading test for analysis does not change the train/val hash


def test_split_train_val_holds_out_whole_patients_in_every_class():
    labels = np.repeat([0, 1, 2], 20)
    patients = [f"p{i // 2}" for i in range(60)]  # two images per patient
    train, val, how = split_train_val(labels, patients, split_seed=0, val_fraction=0.2)
    assert "by patient" in how
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(60))  # a partition
    assert not {patients[i] for i in train} & {patients[i] for i in val}
    assert set(labels[val].tolist()) == {0, 1, 2}  # stratified: every class in val
    again = split_train_val(labels, patients, split_seed=0, val_fraction=0.2)
    assert np.array_equal(again[1], val)  # seeded


def test_split_hash_ignores_order_but_not_membership():
    assert split_hash(["a", "b"], ["c"]) == split_hash(["b", "a"], ["c"])
    assert split_hash(["a", "b"], ["c"]) != split_hash(["a", "c"], ["b"])


def test_a_class_of_one_image_is_refused_naming_the_class_and_its_folder(tmp_path):
    # No patient ids (plain file names): the stratified shuffle split needs two of each class.
    root = tmp_path / "data"
    for cls, n in {"NORMAL": 6, "BACTERIA": 6, "VIRAL": 1}.items():
        for i in range(n):
            noise(root / "train" / cls / f"{cls.lower()}{i}.png", 100 * len(cls) + i)
            noise(root / "test" / cls / f"{cls.lower()}{i}.png", 500 + 100 * len(cls) + i)
    with pytest.raises(ValueError) as err:
        load_dataset(str(root), image_size=S)
    message = str(err.value)
    # The class by name and the folder holding its one image, not scikit-learn's label index.
    assert "class 'VIRAL' has 1 image" in message
    assert str(root / "train" / "VIRAL") in message
    assert "[2]" not in message and "least populated" not in message
