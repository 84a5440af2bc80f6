"""search.export writes only where it deletes nothing it did not write, and cleans the hidden
folders an interrupted export left (real files; the whole export runs in test_sweep)."""

from __future__ import annotations

import json
from pathlib import Path

from search.export import ONNX_FILE, clean_staging, replace_refusal
from trainables.bundle import BUNDLE_FILES, BUNDLE_FORMAT, BUNDLE_META_FILE


def _bundle(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name in (*BUNDLE_FILES, ONNX_FILE):
        (folder / name).write_text("x")
    (folder / BUNDLE_META_FILE).write_text(json.dumps({"format": BUNDLE_FORMAT}))
    return folder


def test_a_new_an_empty_or_an_earlier_bundle_folder_may_be_replaced(tmp_path) -> None:
    assert replace_refusal(tmp_path / "new") is None
    (tmp_path / "empty").mkdir()
    assert replace_refusal(tmp_path / "empty") is None
    assert replace_refusal(_bundle(tmp_path / "bundle")) is None


def test_a_folder_holding_anything_else_is_refused_naming_what_it_holds(tmp_path) -> None:
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    for name in ("a.txt", "b.txt", "c.txt", "d.txt", "e.txt"):
        (mine / name).write_text("keep")
    message = replace_refusal(mine)
    assert message and message.startswith(f"{mine} holds a.txt, b.txt, c.txt, d.txt, e.txt")
    assert "and 1 more and no bundle" in message
    # A bundle the user added a file to: replacing it would delete that file.
    bundle = _bundle(tmp_path / "bundle")
    (bundle / "notes.md").write_text("mine")
    assert f"{bundle} holds a bundle plus notes.md" in replace_refusal(bundle)
    (tmp_path / "file").write_text("x")
    assert replace_refusal(tmp_path / "file") == f"{tmp_path / 'file'} is a file, not a folder"


def test_hidden_folders_of_an_interrupted_export_are_cleaned_and_nothing_else(tmp_path) -> None:
    out = tmp_path / "bundle"
    building = tmp_path / ".bundle.k2j4_9ab"  # tempfile's 8 random characters
    (building / "bundle").mkdir(parents=True)
    (building / ONNX_FILE).write_text("half")
    (building / ".bundle.new.x1y2.tmp").mkdir()  # save_bundle's own staging, killed
    replacing = _bundle(tmp_path / ".bundle.old")
    users = tmp_path / ".bundle.notes123"  # named alike, holding the user's file
    users.mkdir()
    (users / "diary.txt").write_text("mine")
    other = tmp_path / ".other.k2j4_9ab"
    (other / "bundle").mkdir(parents=True)
    assert clean_staging(out) == [building, replacing]
    assert not building.exists() and not replacing.exists()
    assert (users / "diary.txt").exists() and other.exists()
