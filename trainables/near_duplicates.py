"""Every pair of 256-bit hashes from two different groups within `max_bits` differing bits, in
better than quadratic time, with the same answer as comparing every pair.

`find_close_pairs(bits, groups, max_bits)` chooses between two exact searches:

- **Multi-index hashing** (Norouzi, Punjani & Fleet, CVPR 2012). The 256 bits are cut into
  `m` substrings with ``3 m > max_bits``; by the pigeonhole principle two hashes within
  `max_bits` differ in at most ``max_bits // m <= 2`` bits of at least one substring. Each
  substring key is spread over its radius-1 neighbourhood (the key and the key with one bit
  flipped), so two keys within 2 bits share a neighbour; the neighbours of all hashes are
  sorted (numpy), and hashes sharing a neighbour are the candidates, checked with a popcount of
  their XOR. A pair is counted once: in the first substring where it is within 2 bits, and
  there for one canonical shared neighbour. Work grows with the candidates, about
  ``m N^2 (w + 1)^2 / 2^w`` for random hashes of `w`-bit substrings, not with every pair.
- **Blocked exhaustive** comparison (popcount of XOR over every cross-group pair, in blocks of
  `BLOCK_PAIRS`), used when the hashes are so alike that most pairs are candidates anyway (the
  index would cost more than comparing), estimated on a sample first.

Either way memory stays bounded: matches are counted, never listed one object per pair, and
only the `keep` closest survive (a bounded `np.partition` of one integer code per pair).
`progress(fraction, text)` is called every few seconds; the work is cut into numpy steps of
well under a second, so Ctrl-C (KeyboardInterrupt) stops it promptly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

HASH_BITS = 256
WORDS = HASH_BITS // 64
KEEP = 200  # closest pairs kept; the count is always complete
FLIP_BITS = 6  # bits for "which bit of the substring was flipped" (0 = none): substrings <= 63
BLOCK_PAIRS = 1 << 22  # pairs compared per exhaustive block: about 50 MB of temporaries
SAMPLE = 4000  # hashes sampled to estimate the index's candidates before choosing a search
CANDIDATE_COST = 12  # one index candidate costs about this many exhaustive pair comparisons
PROGRESS_EVERY = 2.0  # seconds between progress calls
METHODS = ("auto", "index", "exhaustive")

Progress = Callable[[float, str], None]


@dataclass
class Matches:
    count: int
    """Every pair of different groups within the bound."""
    pairs: np.ndarray
    """int64 (K, 3) rows (i, j, bits), i < j, the `keep` closest, ordered by (bits, i, j)."""
    checked: int
    """Pairs of different groups: what an exhaustive search compares."""
    method: str
    """'index' or 'exhaustive': the search that ran."""
    candidates: int = 0
    """Pairs the index produced (before the popcount check); 0 for the exhaustive search."""


def pack(bits: np.ndarray) -> np.ndarray:
    """bool (N, 256) -> uint64 (N, 4): the same bits, 64 to a word (XOR + popcount = Hamming)."""
    bits = np.asarray(bits, dtype=bool)
    if bits.ndim != 2 or bits.shape[1] != HASH_BITS:
        raise ValueError(f"hashes must be bool (N, {HASH_BITS}), got {bits.shape}")
    return np.ascontiguousarray(np.packbits(bits, axis=1)).view(np.uint64)


def find_close_pairs(
    bits: np.ndarray,
    groups: np.ndarray,
    max_bits: int,
    keep: int = KEEP,
    progress: Progress | None = None,
    method: str = "auto",
) -> Matches:
    """Pairs (i, j) with groups[i] != groups[j] and at most `max_bits` differing bits.

    `bits` is bool (N, 256); `groups` int (N,), sorted ascending (items of one group together,
    so ties at the `keep` boundary fall to the smaller (i, j) in either search)."""
    bits, groups = np.asarray(bits, dtype=bool), np.asarray(groups, dtype=np.int64)
    if method not in METHODS:
        raise ValueError(f"unknown search method {method!r}; expected one of {list(METHODS)}")
    if not 0 <= max_bits <= HASH_BITS:
        raise ValueError(f"max_bits must be in [0, {HASH_BITS}], got {max_bits}")
    if len(groups) != len(bits) or np.any(np.diff(groups) < 0):
        raise ValueError("groups must give one label per hash, sorted ascending")
    state = _State(pack(bits), groups, max_bits, keep, progress)
    if method == "auto" and _index_pays(bits, groups, max_bits):
        budget = max(state.checked / CANDIDATE_COST * 2, 1 << 20)  # candidates
        found = _index_search(bits, state, budget)
        if found is not None:
            return found
        state = _State(state.packed, groups, max_bits, keep, progress)  # it did not pay: restart
    elif method == "index":
        return _index_search(bits, state, float("inf"))
    return _exhaustive_search(state)


class _State:
    """What both searches accumulate: the count, the closest pairs, progress."""

    def __init__(self, packed, groups, max_bits, keep, progress) -> None:
        self.packed, self.groups, self.max_bits, self.keep = packed, groups, max_bits, keep
        # Group labels as small integers: gathered per candidate, so a cache-friendly array.
        self.small_groups = np.unique(groups, return_inverse=True)[1].astype(np.int32)
        self.progress, self.last = progress, time.monotonic()
        self.count = 0
        self.idbits = max(1, int(len(groups)).bit_length())
        self.codes = np.zeros(0, np.uint64)  # (bits << 2 idbits) | (i << idbits) | j
        sizes = np.bincount(np.unique(groups, return_inverse=True)[1]) if len(groups) else []
        self.checked = int((np.sum(sizes) ** 2 - np.sum(np.square(sizes))) // 2)

    def add(self, i: np.ndarray, j: np.ndarray, bits: np.ndarray) -> None:
        """Count matched pairs (i < j) and keep the closest `keep` of all seen so far."""
        self.count += len(i)
        if not len(i) or not self.keep:
            return
        shift = np.uint64(self.idbits)
        code = (bits.astype(np.uint64) << (shift + shift)) | (i.astype(np.uint64) << shift)
        self.codes = np.concatenate([self.codes, code | j.astype(np.uint64)])
        if len(self.codes) > self.keep:
            self.codes = np.partition(self.codes, self.keep - 1)[: self.keep]

    def worst_kept(self) -> int:
        """Bits of the farthest kept pair once `keep` are kept (a pair must beat it), else max."""
        if len(self.codes) < self.keep or not self.keep:
            return self.max_bits
        return int(self.codes.max() >> np.uint64(2 * self.idbits))

    def tick(self, fraction: float, text: str) -> None:
        now = time.monotonic()
        if self.progress is not None and now - self.last >= PROGRESS_EVERY:
            self.last = now
            self.progress(fraction, f"{text}; {self.count:,} pairs within {self.max_bits} bits")

    def result(self, method: str, candidates: int = 0) -> Matches:
        codes = np.sort(self.codes)
        mask = np.uint64((1 << self.idbits) - 1)
        rows = np.stack(
            [
                (codes >> np.uint64(self.idbits)) & mask,
                codes & mask,
                codes >> np.uint64(2 * self.idbits),
            ],
            axis=1,
        ).astype(np.int64)
        return Matches(self.count, rows.reshape(-1, 3), self.checked, method, candidates)


# ------------------------------------------------------------------ multi-index hashing


def substrings(max_bits: int, n: int) -> tuple[list[tuple[int, int]], int]:
    """The bit ranges of the substrings and the radius searched in each (0: equal keys only,
    2: keys within 2 bits, through shared radius-1 neighbours). 3 m > max_bits so that one
    substring is within 2 bits; keys, item ids and the flipped bit share one uint64."""
    idbits = max(1, int(n).bit_length())
    widest = 64 - FLIP_BITS - idbits
    m = min(HASH_BITS, max(max_bits // 3 + 1, -(-HASH_BITS // widest)))
    bounds = np.linspace(0, HASH_BITS, m + 1).round().astype(int)
    radius = 0 if max_bits // m == 0 else 2
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)], radius


def substring_keys(bits: np.ndarray, ranges: list[tuple[int, int]]) -> np.ndarray:
    """uint64 (N, m): each substring of each hash as an integer (its first bit the lowest)."""
    keys = np.zeros((len(bits), len(ranges)), np.uint64)
    for k, (a, b) in enumerate(ranges):
        packed = np.packbits(bits[:, a:b], axis=1, bitorder="little")
        padded = np.zeros((len(bits), 8), np.uint8)
        padded[:, : packed.shape[1]] = packed
        keys[:, k] = padded.view("<u8")[:, 0]
    return keys


def _index_pays(bits: np.ndarray, groups: np.ndarray, max_bits: int) -> bool:
    """Whether the index's candidates (estimated on a sample) cost less than every pair."""
    n = len(bits)
    if n < 2:
        return False
    take = np.sort(np.random.default_rng(0).choice(n, min(n, SAMPLE), replace=False))
    ranges, radius = substrings(max_bits, n)
    keys = substring_keys(bits[take], ranges)
    idbits = max(1, len(take).bit_length())
    joined = sum(
        _runs(*_sorted_words(keys[:, k], b - a, radius, idbits))[2]
        for k, (a, b) in enumerate(ranges)
    )
    estimate = joined * (n / len(take)) ** 2
    sizes = np.bincount(np.unique(groups, return_inverse=True)[1])
    checked = (n**2 - float(np.sum(np.square(sizes.astype(float))))) / 2
    return estimate * CANDIDATE_COST < checked


def _sorted_words(
    keys: np.ndarray, width: int, radius: int, idbits: int
) -> tuple[np.ndarray, np.ndarray]:
    """(group key of each sorted word, the sorted words): one word per (hash, neighbour),
    ``neighbour << (idbits + FLIP_BITS) | item << FLIP_BITS | flipped bit + 1 (0: none)``."""
    shift = np.uint64(idbits + FLIP_BITS)
    flips = np.arange(width + 1 if radius else 1, dtype=np.uint64)
    masks = np.where(flips > 0, np.uint64(1) << (flips - np.uint64(1)), np.uint64(0)) << shift
    words = (keys << shift)[:, None] ^ masks[None, :]
    words |= flips[None, :]
    words |= (np.arange(len(keys), dtype=np.uint64) << np.uint64(FLIP_BITS))[:, None]
    words = words.ravel()
    words.sort()
    return words >> shift, words


def _runs(key: np.ndarray, words: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """The words whose key another word shares (few, for hashes that differ), the end of the
    run of equal keys each belongs to, and the pairs of words sharing a key (the candidates)."""
    same = key[1:] == key[:-1]
    shared = np.zeros(len(key), bool)
    shared[1:] |= same
    shared[:-1] |= same
    key, words = key[shared], words[shared]
    if not len(key):
        return words, np.zeros(0, np.int64), 0
    starts = np.flatnonzero(np.concatenate([[True], key[1:] != key[:-1]]))
    sizes = np.diff(np.append(starts, len(key)))
    end = np.repeat(np.cumsum(sizes), sizes)  # one past the last word of each run
    return words, end, int(np.sum(sizes * (sizes - 1) // 2))


def _index_search(bits: np.ndarray, state: _State, budget: float) -> Matches | None:
    """Multi-index hashing; None when the candidates outgrow `budget`."""
    ranges, radius = substrings(state.max_bits, len(bits))
    keys = substring_keys(bits, ranges)
    candidates = 0
    for k, (a, b) in enumerate(ranges):
        words, end, joined = _runs(*_sorted_words(keys[:, k], b - a, radius, state.idbits))
        candidates += joined
        if candidates > budget:
            return None
        _pairs_of_substring(words, end, k, keys, radius, state, len(ranges))
        state.tick((k + 1) / len(ranges), f"index substring {k + 1}/{len(ranges)}")
    return state.result("index", candidates)


def _pairs_of_substring(
    words: np.ndarray,
    end: np.ndarray,
    k: int,
    keys: np.ndarray,
    radius: int,
    state: _State,
    m: int,
) -> None:
    """Every pair of words sharing a key, walked by offset d inside each run of equal keys."""
    active = np.flatnonzero(np.arange(len(words)) + 1 < end)
    d = 1
    while len(active):
        _check(words[active], words[active + d], k, keys, radius, state)
        d += 1
        active = active[active + d < end[active]]
        state.tick(k / m, f"index substring {k + 1}/{m}")


def _check(
    wa: np.ndarray, wb: np.ndarray, k: int, keys: np.ndarray, radius: int, state: _State
) -> None:
    """Count the candidate pairs (two words sharing a neighbour in substring k) that are one
    pair's canonical sighting, of two groups, within the bound, first seen in substring k."""
    fmask, shift = np.uint64((1 << FLIP_BITS) - 1), np.uint64(FLIP_BITS)
    idmask = np.uint64((1 << state.idbits) - 1)
    ia, ib = (wa >> shift) & idmask, (wb >> shift) & idmask
    fa, fb = wa & fmask, wb & fmask
    swap = ia > ib
    fi, fj = np.where(swap, fb, fa), np.where(swap, fa, fb)
    # One sighting per pair: keys equal -> the shared neighbour both reach unflipped; 1 bit
    # apart -> the smaller item's own key; 2 bits apart -> the lower flip on the smaller item.
    ok = (fi == 0) | ((fj != 0) & (fi < fj))
    sel = np.flatnonzero(ok)
    ia, ib = ia[sel].astype(np.intp), ib[sel].astype(np.intp)
    sel = np.flatnonzero(state.small_groups[ia] != state.small_groups[ib])
    ia, ib = ia[sel], ib[sel]
    i, j = np.minimum(ia, ib), np.maximum(ia, ib)
    dist = np.bitwise_count(state.packed[i] ^ state.packed[j]).sum(axis=1, dtype=np.int64)
    near = dist <= state.max_bits
    i, j, dist = i[near], j[near], dist[near]
    if k and len(i):  # counted in an earlier substring already?
        earlier = np.bitwise_count(keys[i, :k] ^ keys[j, :k]) <= radius
        first = ~earlier.any(axis=1)
        i, j, dist = i[first], j[first], dist[first]
    state.add(i, j, dist)


# ------------------------------------------------------------------ blocked exhaustive


def _exhaustive_search(state: _State) -> Matches:
    """Every cross-group pair, `BLOCK_PAIRS` at a time: rows of one group against the columns
    of every later group (groups are sorted, so those columns are one contiguous range)."""
    groups, n = state.groups, len(state.groups)
    ends = np.searchsorted(groups, groups, side="right")  # first column of a later group
    columns = state.packed.T.copy()  # (4, N): contiguous words for broadcasting
    done, start = 0, 0
    while start < n:
        first = int(ends[start])
        width = n - first
        rows = max(1, min(BLOCK_PAIRS // max(width, 1), first - start))
        if width:
            dist = distances(state.packed[start : start + rows], columns[:, first:])
            _add_block(dist, start, first, state)
            done += rows * width
            state.tick(done / max(state.checked, 1), f"{done:,} of {state.checked:,} pairs")
        start += rows
    return state.result("exhaustive")


def distances(rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """uint16 (R, C) Hamming distances between packed rows (R, 4) and columns (4, C)."""
    dist = np.zeros((len(rows), columns.shape[1]), np.uint16)
    xor = np.empty(dist.shape, np.uint64)
    count = np.empty(dist.shape, np.uint8)
    for w in range(WORDS):
        np.bitwise_xor(rows[:, w, None], columns[w][None, :], out=xor)
        np.bitwise_count(xor, out=count)
        dist += count
    return dist


def _add_block(dist: np.ndarray, row0: int, col0: int, state: _State) -> None:
    """Count a block's matches; hand on only those that can enter the kept closest: every
    pair closer than the cut and, at the cut, the first ones in (i, j) order."""
    hist = np.bincount(dist.ravel(), minlength=HASH_BITS + 1)
    matched = int(hist[: state.max_bits + 1].sum())
    if not matched:
        return
    cut = min(int(np.searchsorted(np.cumsum(hist), state.keep)), state.worst_kept())
    below = np.nonzero(dist < cut)
    at = dist == cut
    need = state.keep - len(below[0])
    last_row = int(np.searchsorted(np.cumsum(at.sum(axis=1)), need))  # rows holding enough ties
    tied = np.nonzero(at[: last_row + 1])
    r = np.concatenate([below[0], tied[0]])
    c = np.concatenate([below[1], tied[1]])
    state.add(r + row0, c + col0, dist[r, c].astype(np.int64))
    state.count += matched - len(r)  # the rest is counted, not kept
