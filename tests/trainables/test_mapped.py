"""A trial's mapped dataset: the same data as a full load, no per-image objects in the trial's
process, errors and a killed child reported, records cleaned up with their views."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from image_folders import S, make_folder, noise
from smaps import two_trials_smaps

from trainables import decode_cache
from trainables.config import TrialConfig
from trainables.data import load_dataset
from trainables.mapped import in_child, load_mapped, open_mapped

pytestmark = pytest.mark.usefixtures("cold_cache")


def test_a_mapped_load_is_the_full_load(tmp_path):
    root = make_folder(tmp_path / "d")
    full = load_dataset(str(root), image_size=S, split_seed=3)
    mapped = load_mapped(TrialConfig(data=str(root), image_size=S, split_seed=3))
    assert mapped.decoded == 0  # the full load above built the cache
    assert mapped.view == full.view and mapped.root == full.root
    assert mapped.classes == full.classes and mapped.test is None
    for a, b in ((mapped.train, full.train), (mapped.val, full.val)):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
        assert a.paths == b.paths and a.patients == b.patients  # read from the record on use
    assert mapped.split_record == {"hash": full.split_record["hash"]}
    assert mapped.report.counts == full.report.counts
    assert mapped.report.files_sha256 == full.report.files_sha256


def test_a_cold_mapped_load_builds_in_its_child(tmp_path):
    root = make_folder(tmp_path / "d")
    mapped = load_mapped(TrialConfig(data=str(root), image_size=S))
    assert mapped.decoded == 70  # the child decoded every file once
    assert load_mapped(TrialConfig(data=str(root), image_size=S)).decoded == 0


def test_changed_data_maps_the_new_view_and_the_old_record_goes(tmp_path):
    root = make_folder(tmp_path / "d")
    first = load_mapped(TrialConfig(data=str(root), image_size=S))
    noise(root / "train" / "VIRAL" / "person999_virus_1.png", seed=999)
    second = load_mapped(TrialConfig(data=str(root), image_size=S))
    assert len(second.train) + len(second.val) == len(first.train) + len(first.val) + 1
    assert not first.view.with_suffix(".json").exists()
    assert not first.view.with_suffix(decode_cache.RECORD_SUFFIX).exists()
    assert open_mapped(first.view) is None  # a trial holding the old id loads again
    assert second.view.with_suffix(decode_cache.RECORD_SUFFIX).is_file()


def test_refusals_and_a_killed_child_reach_the_trial(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError) as full:
        load_dataset(str(empty), image_size=S)
    with pytest.raises(ValueError) as mapped:
        load_mapped(TrialConfig(data=str(empty), image_size=S))
    assert str(mapped.value) == str(full.value)  # the same one line
    with pytest.raises(RuntimeError, match="child process ended"):
        in_child(lambda _: os.kill(os.getpid(), signal.SIGKILL), None)
    assert in_child(lambda x: (x, os.getpid()), 5)[1] != os.getpid()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("loader", "size", "per_class"),
    [
        # The full load at 256 px (64 KiB an image): the pixels are shared, its ~0.8 KB of
        # objects per file stays under 5 % of them. 60 -> 480 images.
        ("load_dataset", 256, (20, 160)),
        # A trial's mapped load at 64 px (4 KiB an image), where the full load's objects alone
        # would be ~20 % (3.5 MB for 8.6 MB grown): under 5 %. 300 -> 2,400 images.
        ("load_mapped", 64, (100, 800)),
    ],
)
def test_two_trials_share_one_copy_and_private_memory_stays_within_5_percent(
    tmp_path, loader, size, per_class
):
    roots = [
        make_folder(tmp_path / f"n{n}", counts={"NORMAL": n, "BACTERIA": n, "VIRAL": n})
        for n in per_class
    ]
    pixels = []
    for root in roots:  # the driver's pre-flight builds each cache once
        ds = load_dataset(str(root), image_size=size)
        pixels.append((len(ds.train) + len(ds.val)) * size * size)
    grown = pixels[1] - pixels[0]
    assert grown > 8 * 2**20  # x8 the images
    for before, after in two_trials_smaps(tmp_path, roots, size, loader):
        b, a = before["fields"], after["fields"]
        private = sum(a[k] - b[k] for k in ("Private_Clean", "Private_Dirty"))
        assert private < 0.05 * grown, (private, grown)
        # The pages are the node's one copy, shared by both processes.
        assert a["Shared_Clean"] - b["Shared_Clean"] > 0.9 * grown


_ORPHAN = r"""
import os, sys, time
from pathlib import Path
from trainables.mapped import in_child

def hang(path):
    Path(path).write_text(str(os.getpid()))
    time.sleep(600)

in_child(hang, sys.argv[1])
"""


def test_the_listing_child_ends_when_its_trial_is_killed(tmp_path):
    import subprocess
    import sys
    import time
    from pathlib import Path

    pid_file = tmp_path / "child.pid"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    parent = subprocess.Popen([sys.executable, "-c", _ORPHAN, str(pid_file)], env=env)
    try:
        deadline = time.monotonic() + 60
        while not pid_file.is_file() or not pid_file.read_text():
            assert time.monotonic() < deadline and parent.poll() is None
            time.sleep(0.05)
        child = int(pid_file.read_text())
        parent.kill()  # as Ray ends a stopped trial's process
        parent.wait(timeout=30)
        deadline = time.monotonic() + 30
        while _alive(child):
            assert time.monotonic() < deadline, "the listing child outlived its trial"
            time.sleep(0.05)
    finally:
        parent.kill()


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for init to reap it has ended)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
