"""Layout listing: image folders, the pediatric set, aliases, patient ids, hidden and missing
files."""

from __future__ import annotations

import csv
from collections import Counter

import pytest
from image_folders import S, make_folder, make_pediatric, noise

from trainables.data import load_dataset
from trainables.layouts import CLASS_ALIASES, class_of_folder
from trainables.vocab import CLASSES

pytestmark = pytest.mark.usefixtures("cold_cache")


def test_missing_data_path_is_refused(tmp_path):
    with pytest.raises(ValueError, match="does not exist") as err:
        load_dataset(str(tmp_path / "nowhere"), image_size=S)
    assert "nowhere" in str(err.value)  # the message names the path


def test_missing_train_split_names_the_folder(tmp_path):
    (tmp_path / "test" / "NORMAL").mkdir(parents=True)
    with pytest.raises(ValueError, match="missing split folder") as err:
        load_dataset(str(tmp_path), image_size=S)
    assert str(tmp_path / "train") in str(err.value)


def test_missing_test_split_is_refused_only_when_test_is_read(tmp_path):
    root = make_folder(tmp_path / "d")
    for f in (root / "test").rglob("*.png"):
        f.unlink()
    for d in sorted((root / "test").iterdir()):
        d.rmdir()
    (root / "test").rmdir()
    # Training never reads test, so its absence does not matter there.
    assert len(load_dataset(str(root), image_size=S).train) > 0
    with pytest.raises(ValueError, match="missing split folder") as err:
        load_dataset(str(root), image_size=S, include_test=True)
    assert str(root / "test") in str(err.value)


def test_any_class_folder_name_is_a_class_after_the_seed_classes(tmp_path):
    root = make_folder(tmp_path / "d")
    for i in range(20):
        noise(root / "train" / "Tuberculosis" / f"person{500 + i}_tb_{i}.png", 900 + i)
    ds = load_dataset(str(root), image_size=S)
    # Seed classes first in their order, then the others sorted (as ImageFolder does).
    assert ds.classes == ["NORMAL", "BACTERIA", "VIRAL", "Tuberculosis"]
    assert ds.report.counts["train"]["Tuberculosis"] + ds.report.counts["val"]["Tuberculosis"] == 20


def test_empty_class_folder_is_refused(tmp_path):
    root = make_folder(tmp_path / "d")
    (root / "train" / "COVID-19").mkdir()
    with pytest.raises(ValueError, match="empty class folder") as err:
        load_dataset(str(root), image_size=S)
    assert "COVID-19" in str(err.value)


def test_hidden_files_are_ignored_and_counted(tmp_path):
    root = make_folder(tmp_path / "d")
    (root / "train" / ".DS_Store").write_bytes(b"\x00\x01junk")
    (root / "train" / "NORMAL" / "._person1_normal_0.png").write_bytes(b"junk")
    ds = load_dataset(str(root), image_size=S)
    assert ds.report.ignored_hidden == 2
    assert ds.report.skipped == []  # hidden files are not reported as unreadable images


def test_alias_table_maps_seed_and_common_folder_names():
    for name in ("COVID-19", "covid", "Pneumonia-Viral", "VIRUS", "Viral Pneumonia", "viral"):
        assert class_of_folder(name) == "VIRAL", name
    for name in ("Pneumonia-Bacterial", "BACTERIAL", "bacteria"):
        assert class_of_folder(name) == "BACTERIA", name
    assert class_of_folder("Normal") == "NORMAL"
    assert class_of_folder("PNEUMONIA") is None  # ambiguous: only the pediatric names split it
    assert set(CLASS_ALIASES.values()) == set(CLASSES)


def test_alias_folders_stay_apart_unless_the_class_map_merges_them(tmp_path):
    root = make_folder(
        tmp_path / "d",
        counts={"normal": 10, "Pneumonia-Bacterial": 10, "COVID-19": 10, "Pneumonia-Viral": 10},
        test_counts={"Normal": 2, "BACTERIAL": 2, "COVID-19": 1, "Pneumonia_Viral": 1},
        images_per_patient=1,
    )
    ds = load_dataset(str(root), image_size=S, include_test=True)
    # Two folders that both mean VIRAL stay two classes, spelled as in the data; the report
    # says which folder became which class and how to merge them.
    assert ds.classes == ["NORMAL", "BACTERIA", "COVID-19", "Pneumonia-Viral"]
    assert ds.report.sources["BACTERIA"] == ["Pneumonia-Bacterial", "BACTERIAL"]
    assert any("class_map 'seed'" in n for n in ds.report.notes)
    assert ds.report.counts["test"]["Pneumonia-Viral"] == 1  # Pneumonia_Viral in test
    merged = load_dataset(str(root), image_size=S, include_test=True, class_map="seed")
    # The seed's own merge, one option: COVID-19 and Pneumonia-Viral are VIRAL.
    assert merged.classes == list(CLASSES)
    assert merged.report.counts["train"]["VIRAL"] + merged.report.counts["val"]["VIRAL"] == 20
    assert merged.report.counts["test"] == {"NORMAL": 2, "BACTERIA": 2, "VIRAL": 2}
    explicit = load_dataset(
        str(root), image_size=S, class_map="COVID-19=VIRAL,pneumonia viral=VIRAL"
    )
    assert explicit.split_record["hash"] == merged.split_record["hash"]
    with pytest.raises(ValueError, match=r"class_map names labels \['tb'\]"):
        load_dataset(str(root), image_size=S, class_map="TB=VIRAL")


def test_pediatric_layout_merges_val_and_parses_classes_and_patients(tmp_path):
    base = make_pediatric(tmp_path)
    ds = load_dataset(str(tmp_path), image_size=S, include_test=True)  # parent of chest_xray
    assert ds.root == base and ds.report.layout == "pediatric"
    assert ds.classes == ["NORMAL", "BACTERIA", "VIRAL"]
    everything = dict(
        zip(ds.train.paths + ds.val.paths, ds.train.patients + ds.val.patients, strict=True)
    )
    # The official val folder is merged into train before our own split.
    assert "val/PNEUMONIA/person1946_bacteria_4874.jpeg" in everything
    assert everything["val/NORMAL/NORMAL2-IM-1427-0001.jpeg"] == "NORMAL2-IM-1427"
    assert everything["train/NORMAL/IM-0003-0001.jpeg"] == "IM-0003"
    labels = dict(
        zip(
            ds.train.paths + ds.val.paths,
            (ds.train.labels.tolist() + ds.val.labels.tolist()),
            strict=True,
        )
    )
    assert labels["val/PNEUMONIA/person1947_virus_4875.jpeg"] == 2  # virus -> VIRAL
    assert labels["val/PNEUMONIA/person1946_bacteria_4874.jpeg"] == 1  # bacteria -> BACTERIA
    assert ds.report.counts["test"] == {"NORMAL": 1, "BACTERIA": 1, "VIRAL": 1}
    # The chest_xray folder itself is accepted too, with the same result.
    again = load_dataset(str(base), image_size=S)
    assert again.split_record["hash"] == ds.split_record["hash"]


def test_image_folder_val_folder_is_merged_into_train(tmp_path):
    root = make_folder(tmp_path / "d")
    noise(root / "val" / "VIRAL" / "person900_virus_1.png", 4242)
    ds = load_dataset(str(root), image_size=S)
    # A given val folder is not silently dropped: its images join train before our split.
    assert "val/VIRAL/person900_virus_1.png" in ds.train.paths + ds.val.paths
    assert len(ds.train) + len(ds.val) == 71


def test_metadata_csv_supplies_patient_ids(tmp_path):
    root = make_folder(tmp_path / "d", images_per_patient=1)
    rows = []
    for f in sorted((root / "train").rglob("*.png")):
        rel = f.relative_to(root).as_posix()
        rows.append({"split": "train", "path": rel, "patient_id": f"P{len(rows) // 5}"})
    with open(root / "metadata.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["split", "path", "patient_id"])
        writer.writeheader()
        writer.writerows(rows)
    ds = load_dataset(str(root), image_size=S)
    # The CSV's ids win over the person<ID>_ names: five files per patient.
    assert Counter(ds.train.patients + ds.val.patients).most_common(1)[0][1] == 5
    assert not set(ds.train.patients) & set(ds.val.patients)
