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
