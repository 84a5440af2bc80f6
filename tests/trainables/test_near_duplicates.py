"""The near-duplicate search: the index and the blocked exhaustive search find exactly the pairs
a brute-force comparison finds, stay bounded when most pairs match, and stop on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from trainables.near_duplicates import KEEP, find_close_pairs, substrings

REPO = Path(__file__).resolve().parents[2]


def planted(seed: int, n: int = 240, copies: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Random hashes, `copies` of them replaced by a copy of another with 0-40 bits flipped, and
    three groups of uneven size (sorted, as the search takes them)."""
    rng = np.random.default_rng(seed)
    bits = rng.random((n, 256)) < 0.5
    for _ in range(copies):
        source, target = rng.choice(n, 2, replace=False)
        bits[target] = bits[source]
        bits[target, rng.choice(256, rng.integers(0, 41), replace=False)] ^= True
    return bits, np.sort(rng.choice(3, n, p=[0.6, 0.15, 0.25]))


def alike(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of images that look alike: one hash with ~8 random bits flipped per item, so
    nearly every pair is within 32 bits of each other."""
    rng = np.random.default_rng(seed)
    bits = (rng.random(256) < 0.5)[None, :] ^ (rng.random((n, 256)) < 8 / 256)
    return bits, np.sort(rng.choice(3, n, p=[0.6, 0.15, 0.25]))


def brute_force(bits: np.ndarray, groups: np.ndarray, max_bits: int) -> list[tuple[int, int, int]]:
    """Independent reference: (bits, i, j) of every cross-group pair within the bound, sorted,
    from an element-wise comparison of every pair of rows."""
    diff = (bits[:, None, :] != bits[None, :, :]).sum(axis=2)
    i, j = np.nonzero(np.triu(diff <= max_bits, k=1) & (groups[:, None] != groups[None, :]))
    return sorted(zip(diff[i, j].tolist(), i.tolist(), j.tolist(), strict=True))


def as_rows(found) -> list[tuple[int, int, int]]:
    return [(b, i, j) for i, j, b in found.pairs.tolist()]


@pytest.mark.parametrize("method", ["index", "exhaustive"])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("max_bits", [0, 1, 3, 8, 17, 32, 40])
def test_both_searches_find_exactly_the_brute_force_pairs(method, seed, max_bits):
    bits, groups = planted(seed)
    expected = brute_force(bits, groups, max_bits)
    found = find_close_pairs(bits, groups, max_bits, keep=10**6, method=method)
    # Every pair, each once, with its distance; and the count agrees.
    assert found.method == method
    assert found.count == len(expected) and as_rows(found) == expected
    # A short list keeps the closest ones, ties broken by (i, j).
    assert as_rows(find_close_pairs(bits, groups, max_bits, keep=5, method=method)) == expected[:5]
    sizes = np.bincount(groups)
    assert found.checked == (sizes.sum() ** 2 - (sizes**2).sum()) // 2


def test_exact_copies_and_many_groups_at_threshold_zero():
    bits, _ = planted(3)
    bits[10], bits[200] = bits[50], bits[50]  # three identical hashes
    groups = np.repeat(np.arange(8), 30)  # eight groups
    expected = brute_force(bits, groups, 0)
    assert len(expected) >= 3
    for method in ("index", "exhaustive", "auto"):
        assert as_rows(find_close_pairs(bits, groups, 0, keep=10**6, method=method)) == expected


@pytest.mark.parametrize("method", ["index", "exhaustive"])
def test_an_all_alike_set_is_found_pair_for_pair(method):
    bits, groups = alike(4, 300)
    expected = brute_force(bits, groups, 32)
    assert len(expected) > 0.9 * find_close_pairs(bits, groups, 32, method=method).checked
    found = find_close_pairs(bits, groups, 32, keep=10**6, method=method)
    assert found.count == len(expected) and as_rows(found) == expected


def test_auto_uses_the_index_on_distinct_hashes_and_compares_all_when_all_alike():
    rng = np.random.default_rng(5)
    bits = rng.random((20000, 256)) < 0.5
    groups = np.sort(rng.choice(3, 20000))
    found = find_close_pairs(bits, groups, 32)
    # The index produced far fewer candidates than there are pairs.
    assert found.method == "index" and found.candidates < found.checked / 100
    assert find_close_pairs(*alike(6, 2000), 32).method == "exhaustive"


def test_many_matches_are_counted_with_bounded_memory_and_the_closest_kept():
    bits, groups = alike(7, 5000)
    # Independent count: distances as a float matrix product, one block of rows at a time.
    x = bits.astype(np.float32)
    ones = x.sum(axis=1)
    cross = groups[:, None] != groups[None, :]
    close = []
    for a in range(0, len(x), 1000):
        d = ones[a : a + 1000, None] + ones[None, :] - 2 * x[a : a + 1000] @ x.T
        keep = np.triu(np.ones((len(d), len(x)), bool), k=a + 1)[:, :] & cross[a : a + 1000]
        close.append(np.rint(d[keep & (d <= 32.5)]).astype(int))
    close = np.sort(np.concatenate(close))
    tracemalloc.start()
    found = find_close_pairs(bits, groups, 32)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert found.count == len(close) > 4_000_000  # every match counted
    assert len(found.pairs) == KEEP  # the list is capped ...
    assert found.pairs[:, 2].tolist() == close[:KEEP].tolist()  # ... and holds the closest
    # A Python object per match would take gigabytes; the search stays under 100 MB.
    assert peak < 100e6, f"peak {peak / 1e6:.0f} MB"


def test_bad_arguments_are_refused_with_one_line():
    bits, groups = planted(0, n=10, copies=0)
    with pytest.raises(ValueError, match="unknown search method 'fast'; expected one of"):
        find_close_pairs(bits, groups, 3, method="fast")
    with pytest.raises(ValueError, match="sorted ascending"):
        find_close_pairs(bits, groups[::-1], 3)
    with pytest.raises(ValueError, match=r"max_bits must be in \[0, 256\]"):
        find_close_pairs(bits, groups, 300)


def test_substrings_cover_the_hash_and_leave_one_within_two_bits():
    for max_bits in (0, 5, 32, 64):
        ranges, radius = substrings(max_bits, 400_000)
        assert ranges[0][0] == 0 and ranges[-1][1] == 256
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
        assert max_bits // len(ranges) <= radius <= 2  # the pigeonhole bound the search uses


CTRL_C_SCRIPT = """
import numpy as np
from trainables.near_duplicates import find_close_pairs
rng = np.random.default_rng(0)
bits = (rng.random(256) < 0.5)[None, :] ^ (rng.random((80000, 256)) < 8 / 256)
groups = np.sort(rng.choice(3, 80000))
find_close_pairs(bits, groups, 32, progress=lambda f, t: print("progress", t, flush=True))
print("finished", flush=True)
"""


@pytest.mark.slow
def test_ctrl_c_during_a_long_search_ends_it_within_seconds():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", CTRL_C_SCRIPT],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline()  # the search is under way (80k alike: minutes of work)
        assert line.startswith("progress"), line + proc.stderr.read()
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        _, err = proc.communicate(timeout=30)
        waited = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "KeyboardInterrupt" in err and proc.returncode != 0
    assert waited < 5, f"the search went on {waited:.1f} s after Ctrl-C"
