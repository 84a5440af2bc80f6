"""The data layer: readers, preprocessing, the decode-once cache, the patient-grouped split and
every kind of bad input. Image folders are built with PIL in tmp_path; one test reads the phantom.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainables import data
from trainables.data import (
    CLASS_ALIASES,
    CLASSES,
    ImageError,
    class_of_folder,
    decode_file,
    load_dataset,
    preprocess,
)

S = 32  # pixels; small keeps the module fast on 2 cores


@pytest.fixture(autouse=True)
def cold_cache(tmp_path, monkeypatch):
    """Every test starts with its own empty decode cache."""
    monkeypatch.setenv("CXR_TUNE_CACHE", str(tmp_path / "cache"))


def _noise(path: Path, seed: int, size=(24, 20), mode="L") -> Path:
    """A distinct small image (distinct content, so distinct cache keys)."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0]), dtype=np.uint8)
    img = Image.fromarray(arr, mode="L")
    if mode != "L":
        img = img.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def make_folder(
    root: Path,
    counts: dict[str, int] | None = None,
    test_counts: dict[str, int] | None = None,
    images_per_patient: int = 2,
) -> Path:
    """ROOT/{train,test}/<CLASS>/person<PID>_<class>_<N>.png, `images_per_patient` per patient."""
    counts = counts or {"NORMAL": 20, "BACTERIA": 30, "VIRAL": 20}
    test_counts = test_counts or {c: 3 for c in counts}
    seed, pid = 0, 0
    for split, split_counts in (("train", counts), ("test", test_counts)):
        for cls, n in split_counts.items():
            for i in range(n):
                if i % images_per_patient == 0:
                    pid += 1
                seed += 1
                _noise(root / split / cls / f"person{pid}_{cls.lower()}_{i}.png", seed)
    return root


def make_pediatric(root: Path, patients: int = 30) -> Path:
    """chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/ with the public set's file names."""
    base = root / "chest_xray"
    seed = 1000
    for p in range(1, patients + 1):
        for n in range(1 + p % 3):  # 1 to 3 images per patient
            seed += 1
            if p % 3 == 0:
                name = f"NORMAL/IM-{p:04d}-{n + 1:04d}.jpeg"
            else:
                kind = "bacteria" if p % 3 == 1 else "virus"
                name = f"PNEUMONIA/person{p}_{kind}_{seed}.jpeg"
            _noise(base / "train" / name, seed)
    _noise(base / "val" / "NORMAL" / "NORMAL2-IM-1427-0001.jpeg", 1)
    _noise(base / "val" / "PNEUMONIA" / "person1946_bacteria_4874.jpeg", 2)
    _noise(base / "val" / "PNEUMONIA" / "person1947_virus_4875.jpeg", 3)
    _noise(base / "test" / "NORMAL" / "IM-0001-0001.jpeg", 4)
    _noise(base / "test" / "PNEUMONIA" / "person100_bacteria_1.jpeg", 5)
    _noise(base / "test" / "PNEUMONIA" / "person101_virus_2.jpeg", 6)
    return base


# ---------------------------------------------------------------------------- bad input


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


def test_unknown_class_folder_names_folder_and_known_names(tmp_path):
    root = make_folder(tmp_path / "d")
    _noise(root / "train" / "Tuberculosis" / "a.png", 99)
    with pytest.raises(ValueError, match="unknown class folder") as err:
        load_dataset(str(root), image_size=S)
    message = str(err.value)
    assert "Tuberculosis" in message  # names the folder
    assert "NORMAL" in message and "covid-19" in message  # lists classes and aliases


def test_empty_class_folder_is_refused(tmp_path):
    root = make_folder(tmp_path / "d")
    (root / "train" / "COVID-19").mkdir()
    with pytest.raises(ValueError, match="empty class folder") as err:
        load_dataset(str(root), image_size=S)
    assert "COVID-19" in str(err.value)


def _write_bad(kind: str, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "truncated":
        _noise(path, 7, size=(30, 30))
        path.write_bytes(path.read_bytes()[:200])
    elif kind == "corrupt":
        good = _noise(path, 8, size=(30, 30)).read_bytes()
        path.write_bytes(good[:60] + b"\x00garbage" * 40 + good[-12:])
    elif kind == "not_image":
        path.write_text("patient notes, not an image\n")
    elif kind == "zero_byte":
        path.write_bytes(b"")
    elif kind in ("bomb_warning", "bomb_error"):
        # Over the limit set by the test (Image.MAX_IMAGE_PIXELS = 1000 pixels): 40x30 is over
        # it (Pillow warns), 60x60 is over twice it (Pillow raises).
        _noise(path, 9, size=(40, 30) if kind == "bomb_warning" else (60, 60))
    return path


BAD_KINDS = {
    "truncated": "corrupt or truncated",
    "corrupt": "corrupt or truncated",
    "not_image": "not an image",
    "zero_byte": "zero-byte",
    "bomb_warning": "decompression-bomb",
    "bomb_error": "decompression-bomb",
}


@pytest.mark.parametrize("kind", sorted(BAD_KINDS))
def test_decode_file_names_the_bad_file(kind, tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    path = _write_bad(kind, tmp_path / f"bad_{kind}.png")
    with pytest.raises(ImageError, match=BAD_KINDS[kind]) as err:
        decode_file(path, S, "pad")
    assert str(path) in str(err.value)  # the message names the file


def test_unreadable_files_are_skipped_and_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    root = make_folder(tmp_path / "d")
    bad = {
        kind: _write_bad(kind, root / "train" / "NORMAL" / f"x_{kind}.png") for kind in BAD_KINDS
    }
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


def test_hidden_files_are_ignored_and_counted(tmp_path):
    root = make_folder(tmp_path / "d")
    (root / "train" / ".DS_Store").write_bytes(b"\x00\x01junk")
    (root / "train" / "NORMAL" / "._person1_normal_0.png").write_bytes(b"junk")
    ds = load_dataset(str(root), image_size=S)
    assert ds.report.ignored_hidden == 2
    assert ds.report.skipped == []  # hidden files are not reported as unreadable images


def test_bad_arguments_name_the_valid_choices(tmp_path):
    root = make_folder(tmp_path / "d")
    with pytest.raises(ValueError, match=r"resize_mode 'stretch'.*\['crop', 'pad'\]"):
        load_dataset(str(root), image_size=S, resize_mode="stretch")
    with pytest.raises(ValueError, match="phantom:small"):
        load_dataset("phantom:huge", image_size=S)
    with pytest.raises(ValueError, match="val_fraction"):
        load_dataset(str(root), image_size=S, val_fraction=1.0)


# ---------------------------------------------------------------------------- preprocessing


def _asymmetric(w=60, h=40) -> np.ndarray:
    """Dark image with a bright block in the top-left corner."""
    arr = np.full((h, w), 40, dtype=np.uint8)
    arr[: h // 3, : w // 3] = 250
    return arr


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "LA", "P", "1", "CMYK", "I;16", "I", "F"])
def test_every_mode_becomes_uint8_square_with_same_content(mode):
    base = _asymmetric()
    if mode == "I;16":
        img = Image.fromarray(base.astype(np.uint16) * 200)
    elif mode == "I":
        img = Image.fromarray(base.astype(np.int32) * 1000)
    elif mode == "F":
        img = Image.fromarray(base.astype(np.float32) / 255.0)
    else:
        img = Image.fromarray(base).convert(mode)
    assert img.mode == mode
    out = preprocess(img, S, "pad")
    assert out.shape == (S, S) and out.dtype == np.uint8
    # The bright corner stays bright and the dark body dark in every mode.
    assert out[S // 4 + 2, 3] > 150 and out[S // 2 + 4, S - 4] < 120


def test_sixteen_bit_is_scaled_by_its_range_not_clipped():
    ramp = np.linspace(0, 4095, 64 * 64).reshape(64, 64).astype(np.uint16)  # 12-bit data
    out = preprocess(Image.fromarray(ramp), 64, "pad")
    # PIL's own convert("L") clips everything above 255 to white; we keep the whole ramp.
    assert out.min() <= 2 and out.max() >= 253
    assert 100 < out[32, 32] < 155  # the middle of the ramp is mid-grey, not white
    assert (out == 255).mean() < 0.05  # clipping would saturate ~94% of the pixels
    assert np.all(np.diff(out.astype(int).ravel()) >= -1)  # still monotone (up to resampling)


def test_exif_rotation_is_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the viewer turns the stored image 90 degrees clockwise
    Image.fromarray(_asymmetric(60, 40)).save(path, exif=exif, quality=95)
    out = decode_file(path, 40, "crop")
    # Stored bright block at top-left; turned clockwise it sits at the top-right.
    assert out[2, 37] > 200 and out[2, 2] < 100
    upright = decode_file(_noise(tmp_path / "plain.png", 1, (60, 40)), 40, "crop")
    assert upright.shape == out.shape == (40, 40)


def test_pad_keeps_the_whole_image_and_crop_takes_the_centre():
    wide = np.full((20, 60), 200, dtype=np.uint8)
    wide[:, :10] = 10  # dark left edge, only visible when nothing is cropped
    padded = preprocess(Image.fromarray(wide), 60, "pad")
    cropped = preprocess(Image.fromarray(wide), 60, "crop")
    # pad: black bands above and below (20 of 60 rows used), whole width kept, aspect unchanged.
    assert padded[:15].max() == 0 and padded[-15:].max() == 0
    assert padded[30, 2] < 60 and padded[30, 40] > 180
    # crop: the central 20x20 fills the square, so no padding and no dark edge.
    assert cropped.min() > 180


def test_alias_table_maps_seed_and_common_folder_names():
    for name in ("COVID-19", "covid", "Pneumonia-Viral", "VIRUS", "Viral Pneumonia", "viral"):
        assert class_of_folder(name) == "VIRAL", name
    for name in ("Pneumonia-Bacterial", "BACTERIAL", "bacteria"):
        assert class_of_folder(name) == "BACTERIA", name
    assert class_of_folder("Normal") == "NORMAL"
    assert class_of_folder("PNEUMONIA") is None  # ambiguous: only the pediatric names split it
    assert set(CLASS_ALIASES.values()) == set(CLASSES)


def test_alias_folders_load_as_the_three_classes(tmp_path):
    root = make_folder(
        tmp_path / "d",
        counts={"normal": 10, "Pneumonia-Bacterial": 10, "COVID-19": 6, "Pneumonia-Viral": 6},
        test_counts={"Normal": 2, "BACTERIAL": 2, "Viral Pneumonia": 2},
    )
    ds = load_dataset(str(root), image_size=S, include_test=True)
    assert ds.classes == list(CLASSES)  # default order, whatever the folder names
    # COVID-19 and Pneumonia-Viral merge into VIRAL, as in the seed's labels.
    assert ds.report.counts["train"]["VIRAL"] + ds.report.counts["val"]["VIRAL"] == 12
    assert ds.report.counts["test"] == {"NORMAL": 2, "BACTERIA": 2, "VIRAL": 2}


# ---------------------------------------------------------------------------- decode cache


def test_second_load_comes_from_the_cache_without_pil(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "d")
    first = load_dataset(str(root), image_size=S)
    assert first.decoded == 70  # cold: every file decoded once

    def no_pil(*args, **kwargs):
        raise AssertionError("PIL.Image.open called on a warm cache")

    monkeypatch.setattr(Image, "open", no_pil)
    second = load_dataset(str(root), image_size=S)
    assert second.decoded == 0
    assert torch.equal(first.train.images, second.train.images)
    assert first.train.paths == second.train.paths
    # The cached pixels are exactly what decode_file gives.
    monkeypatch.undo()
    direct = decode_file(root / second.val.paths[0], S, "pad")
    assert np.array_equal(second.val.images[0, 0].numpy(), direct)


def test_cache_is_keyed_by_preprocessing_and_content(tmp_path):
    root = make_folder(tmp_path / "d")
    load_dataset(str(root), image_size=S)
    assert load_dataset(str(root), image_size=S, resize_mode="crop").decoded == 70
    assert load_dataset(str(root), image_size=64).decoded == 70
    target = root / "train" / "NORMAL" / "person1_normal_0.png"
    _noise(target, 12345, size=(30, 25))  # new content at the same path
    # Only the changed file is decoded again; the rest is reused from the earlier array.
    assert load_dataset(str(root), image_size=S).decoded == 1


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


def _load_in_child(root: str, cache: str, out: str, barrier) -> None:
    import os

    os.environ["CXR_TUNE_CACHE"] = cache
    from trainables.data import load_dataset as load

    barrier.wait()  # both processes start building the same cache at once
    ds = load(root, image_size=S)
    np.save(out, ds.train.images.numpy())
    Path(out).with_suffix(".json").write_text(json.dumps({"decoded": ds.decoded}))


@pytest.mark.slow
def test_concurrent_processes_build_one_correct_cache(tmp_path):
    root = make_folder(tmp_path / "d")
    # Our own cold cache; loading first also means the forked children inherit the imports.
    expected = load_dataset(str(root), image_size=S).train
    cache = tmp_path / "shared-cache"
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(2)
    outs = [str(tmp_path / f"out{i}.npy") for i in range(2)]
    procs = [
        ctx.Process(target=_load_in_child, args=(str(root), str(cache), o, barrier)) for o in outs
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    for out in outs:
        # Each process got complete, correct pixels (no torn or half-written array).
        assert np.array_equal(np.load(out), expected.images.numpy())
    decoded = [json.loads(Path(o).with_suffix(".json").read_text())["decoded"] for o in outs]
    assert sorted(decoded) == [0, 70]  # one process decoded, the other waited and reused it


# ---------------------------------------------------------------------------- splitting


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
    _noise(root / "val" / "VIRAL" / "person900_virus_1.png", 4242)
    ds = load_dataset(str(root), image_size=S)
    # A given val folder is not silently dropped: its images join train before our split.
    assert "val/VIRAL/person900_virus_1.png" in ds.train.paths + ds.val.paths
    assert len(ds.train) + len(ds.val) == 71


def test_no_patient_is_in_two_splits(tmp_path):
    make_pediatric(tmp_path, patients=60)
    for seed in range(3):
        ds = load_dataset(str(tmp_path), image_size=S, split_seed=seed)
        train_patients, val_patients = set(ds.train.patients), set(ds.val.patients)
        assert val_patients and not train_patients & val_patients  # grouped by patient
        # Patient ids come from the names: person<ID>_ and IM-<ID>.
        assert "1" in train_patients | val_patients and "IM-0003" in train_patients | val_patients


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
