"""Hostile files never crash a load: each is skipped with its reason, in the listing and in the
hashing. Also the two-class NORMAL/PNEUMONIA folder, the pediatric set's unclassified files, and
a data root one level off."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest
from image_folders import S, make_folder, make_pediatric, noise

from trainables import data
from trainables.data import load_dataset

pytestmark = pytest.mark.usefixtures("cold_cache")


def test_hostile_files_are_skipped_with_their_reasons_and_the_good_ones_load(tmp_path):
    root = make_folder(tmp_path / "d")
    normal = root / "train" / "NORMAL"
    os.symlink(tmp_path / "nowhere.png", normal / "dangling.png")
    os.mkfifo(normal / "pipe.png")  # opening it would block forever
    (normal / "folder.png").mkdir()
    noise(normal / "folder.png" / "inside.png", 5000)  # not read: the folder is no class
    (normal / "notes.txt").write_text("not an image")
    ds = load_dataset(str(root), image_size=S)
    reasons = {s["path"]: s["reason"] for s in ds.report.skipped}
    assert reasons["train/NORMAL/dangling.png"] == "dangling symlink"
    assert reasons["train/NORMAL/pipe.png"].startswith("not a regular file")
    assert reasons["train/NORMAL/folder.png"] == "a directory named like an image file"
    assert "not an image file" in reasons["train/NORMAL/notes.txt"]
    assert len(reasons) == 4 and len(ds.train) + len(ds.val) == 70  # every good image loaded
    assert "pipe.png" in ds.report.format()


def test_a_file_deleted_after_listing_is_skipped_not_a_crash(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "d")
    real_list_split = data.list_split

    def list_then_delete(layout, split, listing):
        entries = real_list_split(layout, split, listing)
        entries[0].path.unlink()  # gone between listing and hashing
        return entries

    monkeypatch.setattr(data, "list_split", list_then_delete)
    ds = load_dataset(str(root), image_size=S)
    (gone,) = ds.report.skipped
    assert "vanished after listing" in gone["reason"]
    assert len(ds.train) + len(ds.val) == 69


def _load_as_nobody(root, cache) -> dict:
    """load_dataset in a forked child that dropped root's privileges (the suite runs as root,
    for which every file is readable). The parent has imported everything the load needs."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        os.close(read)
        try:
            os.setgid(65534)
            os.setuid(65534)
            os.environ["CXR_TUNE_CACHE"] = str(cache)
            ds = load_dataset(str(root), image_size=S)
            out = {"skipped": ds.report.skipped, "n": len(ds.train) + len(ds.val)}
        except BaseException as err:
            out = {"error": f"{type(err).__name__}: {err}"}
        os.write(write, json.dumps(out).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as fh:
        body = fh.read()
    os.waitpid(pid, 0)
    return json.loads(body)


@pytest.mark.skipif(not hasattr(os, "fork") or os.geteuid() != 0, reason="needs root to drop")
def test_a_file_the_user_cannot_read_is_skipped(tmp_path):
    load_dataset(str(make_folder(tmp_path / "warm")), image_size=S)  # imports done as root
    # A world-readable copy outside pytest's private tmp_path, one file readable by root only.
    shared = tempfile.mkdtemp(prefix="cxr-nobody-")
    try:
        os.chmod(shared, 0o755)
        root = make_folder(Path(shared) / "d")
        for path in [root, *root.rglob("*")]:
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        secret = root / "train" / "VIRAL" / "person999_viral_0.png"
        noise(secret, 4321)
        os.chmod(secret, 0)
        cache = root.parent / "cache"
        cache.mkdir(mode=0o777)
        os.chmod(cache, stat.S_IRWXU | stat.S_IRWXG | stat.S_IRWXO)
        out = _load_as_nobody(root, cache)
        assert "error" not in out, out
        assert out["skipped"] == [
            {
                "path": "train/VIRAL/person999_viral_0.png",
                "reason": "permission denied: not readable by this user",
            }
        ]
        assert out["n"] == 70
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_normal_pneumonia_folder_without_pediatric_names_is_two_classes(tmp_path):
    root = make_folder(tmp_path / "d", counts={"NORMAL": 20, "PNEUMONIA": 30})
    ds = load_dataset(str(root), image_size=S)
    # Not the pediatric set (its names say bacteria/virus): nothing dropped, two classes.
    assert ds.report.layout == "image-folder" and ds.classes == ["NORMAL", "PNEUMONIA"]
    assert ds.report.skipped == [] and len(ds.train) + len(ds.val) == 50
    assert "0 of 30 PNEUMONIA file names say bacteria or virus" in ds.report.why


def test_pediatric_layout_counts_the_files_it_cannot_classify(tmp_path):
    base = make_pediatric(tmp_path)
    noise(base / "train" / "PNEUMONIA" / "scan_0001.jpeg", 77)
    ds = load_dataset(str(base), image_size=S)
    assert ds.report.layout == "pediatric"
    assert [s["path"] for s in ds.report.skipped] == ["train/PNEUMONIA/scan_0001.jpeg"]
    assert any(n.startswith("1 of ") and "could not be classified" in n for n in ds.report.notes)


def test_a_root_one_level_off_names_the_folder_to_pass(tmp_path):
    root = make_folder(tmp_path / "outer" / "d")
    with pytest.raises(ValueError, match=f"one level too deep: pass --data {root}"):
        load_dataset(str(root / "train"), image_size=S)
    with pytest.raises(ValueError, match=f"has no train folder but {root} has: pass --data {root}"):
        load_dataset(str(tmp_path / "outer"), image_size=S)
