"""The decode cache: a warm load never calls PIL, keys follow content and preprocessing, and
concurrent processes build one correct array."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import torch
from image_folders import S, make_folder, noise
from PIL import Image

from trainables.data import load_dataset
from trainables.preprocess import decode_file

pytestmark = pytest.mark.usefixtures("cold_cache")


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
    noise(target, 12345, size=(30, 25))  # new content at the same path
    # Only the changed file is decoded again; the rest is reused from the earlier array.
    assert load_dataset(str(root), image_size=S).decoded == 1


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


# --- one decoded copy per node: memory maps, killed builds, list and prune ------------------


_KILLED_BUILD = r"""
import os, signal, sys
from trainables import decode_cache
from trainables.data import load_dataset

point = sys.argv[2]
if point == "before-publish":  # every temporary array complete, nothing renamed
    decode_cache._publish = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
else:  # the arrays renamed into place, their markers and the view not yet written
    real = decode_cache.atomic_write_text
    def write(path, text):
        if path.parent.name == "arrays":
            os.kill(os.getpid(), signal.SIGKILL)
        real(path, text)
    decode_cache.atomic_write_text = write
load_dataset(sys.argv[1], image_size=32)
"""


@pytest.mark.parametrize("point", ["before-publish", "after-rename"])
def test_a_cache_written_by_a_killed_build_is_never_read(tmp_path, point):
    import os
    import subprocess
    import sys

    from trainables.decode_cache import decoded_root, list_caches, prune

    root = make_folder(tmp_path / "d")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    done = subprocess.run([sys.executable, "-c", _KILLED_BUILD, str(root), point], env=env)
    assert done.returncode == -9  # killed mid-build
    leftovers = [p for p in decoded_root().rglob("*") if p.is_file() and "arrays" in p.parts]
    assert leftovers  # the killed build did leave files behind ...
    assert list_caches() == []  # ... but no complete dataset
    ds = load_dataset(str(root), image_size=S)
    assert ds.decoded == 70  # everything decoded again: nothing of the killed build was read
    direct = decode_file(root / ds.train.paths[3], S, "pad")
    assert np.array_equal(ds.train.images[3, 0].numpy(), direct)
    prune()  # the dead build's temporary files go; the complete cache stays
    assert not list(decoded_root().rglob("*.tmp-*"))
    assert load_dataset(str(root), image_size=S).decoded == 0


def test_cache_list_and_prune_replace_stale_versions(tmp_path, capsys):
    from cxr_tune.cli import main
    from trainables.decode_cache import decoded_root, list_caches

    root = make_folder(tmp_path / "d")
    ds = load_dataset(str(root), image_size=S)
    load_dataset(str(root), image_size=16)
    entries = list_caches()
    assert [(e.image_size, e.images) for e in entries] == [
        (16, {"train": len(ds.train), "val": len(ds.val)}),  # most recently used first
        (S, {"train": len(ds.train), "val": len(ds.val)}),
    ]
    header = 128  # bytes of an .npy header (version 1.0) before the pixels
    assert entries[1].bytes == (len(ds.train) + len(ds.val)) * S * S + 2 * header
    arrays = sorted(decoded_root().rglob("arrays/*.npy"))
    # A changed file: the new version of the setting replaces the old one, no accumulation.
    noise(root / "train" / "NORMAL" / "person1_normal_0.png", 999, size=(30, 25))
    assert load_dataset(str(root), image_size=S).decoded == 1
    assert len(list_caches()) == 2
    assert len(sorted(decoded_root().rglob("arrays/*.npy"))) == len(arrays)
    assert main(["cache", "list"]) == 0
    out = capsys.readouterr().out
    assert f"{root} | {S} px pad | {len(ds.train)} train, {len(ds.val)} val" in out
    assert main(["cache", "prune", "--older-than", "0"]) == 0
    assert "pruned" in capsys.readouterr().out
    assert list_caches() == [] and not list(decoded_root().rglob("arrays/*.npy"))
    assert main(["cache", "prune", "--older-than", "-1"]) == 2  # refused with one line
    assert "--older-than must be >= 0" in capsys.readouterr().err
    assert main(["cache", "prune", "--all"]) == 0
    assert not decoded_root().exists()
