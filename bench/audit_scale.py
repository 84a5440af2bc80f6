"""The leakage audit's search at dataset scale: time and peak memory against the number of hashes.

    python -m bench.audit_scale [--sizes 10000 50000 112000 377000] [--json PATH]

Hashes only, no images: random 256-bit hashes in three splits (64 / 16 / 20 %, about the pair
count of the issue's measurement at 112k) with 1 % planted near duplicates (copies of another
hash with 0-32 bits flipped), searched at the audit's bound
(`trainables.leakage.NEAR_DUPLICATE_BITS`). Each measurement runs in a fresh process that
imports numpy only (its peak RSS is the measurement's own):

- `index`: `trainables.near_duplicates.find_close_pairs` as the audit calls it (`auto`);
- `exhaustive`: the same module's blocked popcount over every pair, at the sizes it can afford;
- `previous`: the search this replaced (a float32 matrix product per 512 rows, then a Python
  object per matching pair), at the sizes it can afford;
- `alike`: images that look alike (one hash with ~8 bits flipped per item: nearly every pair
  matches), through `auto`: the count complete, the kept list capped, memory flat.

Every method's count is checked against the others' at the sizes where they all ran. The growth
exponent is the slope of log(time) against log(N). The machine is shared: absolute times vary,
the exponents and the ratios are the result.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from trainables.near_duplicates import find_close_pairs

SPLIT_SHARES = (0.64, 0.16, 0.20)
PLANTED = 0.01  # of the hashes: near copies of another
GOAL_S = 60.0  # seconds for 377k hashes on 2 cores


def hashes(n: int, case: str, max_bits: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(bool (n, 256) hashes, sorted split labels) for 'random' (with planted copies) or 'alike',
    generated a block at a time so the generator's memory stays below the search's."""
    rng = np.random.default_rng(seed)
    groups = np.sort(rng.choice(3, n, p=SPLIT_SHARES))
    bits = np.unpackbits(rng.integers(0, 256, (n, 32), dtype=np.uint8), axis=1).astype(bool)
    if case == "alike":
        for start in range(0, n, 10_000):
            block = bits[start : start + 10_000]
            block[:] = bits[0] ^ (rng.random(block.shape, dtype=np.float32) < 8 / 256)
        return bits, groups
    copies = int(n * PLANTED)
    source, target = rng.choice(n, copies), rng.choice(n, copies)
    bits[target] = bits[source]
    flips = rng.integers(0, max_bits + 1, copies)
    for t, k in zip(target.tolist(), flips.tolist(), strict=True):
        bits[t, rng.choice(256, k, replace=False)] ^= True
    return bits, groups


def previous_search(bits: np.ndarray, groups: np.ndarray, max_bits: int) -> int:
    """The audit's search before multi-index hashing (kept here as the reference it replaced):
    Hamming distances as two float32 matrix products per 512 rows, a Python tuple per match."""
    count = 0
    names = sorted(set(groups.tolist()))
    for x, first in enumerate(names):
        for second in names[x + 1 :]:
            a = bits[groups == first].astype(np.float32)
            b = bits[groups == second].astype(np.float32)
            for start in range(0, len(a), 512):
                rows = a[start : start + 512]
                dist = (rows @ (1 - b).T + (1 - rows) @ b.T).round().astype(np.int32)
                hits = np.nonzero(dist <= max_bits)
                pairs = [(i, j, int(dist[i, j])) for i, j in zip(*hits, strict=True)]
                count += len(pairs)
    return count


def peak_rss_kb() -> int:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, it does not carry over
    the parent's peak from before exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def measure(n: int, method: str, max_bits: int) -> dict:
    """One measurement in this process (which imports numpy, not torch: its peak RSS is the
    search's): seconds, peak RSS, the count, what the search did."""
    bits, groups = hashes(n, "alike" if method == "alike" else "random", max_bits)
    base_rss = peak_rss_kb()
    started = time.perf_counter()
    if method == "previous":
        count, kept, used, candidates = previous_search(bits, groups, max_bits), 0, "", 0
    else:
        search = "exhaustive" if method == "exhaustive" else "auto"
        found = find_close_pairs(bits, groups, max_bits, method=search)
        count, kept, used = found.count, len(found.pairs), found.method
        candidates = found.candidates
    seconds = time.perf_counter() - started
    peak = peak_rss_kb()
    sizes = np.bincount(groups)
    return {
        "n": n,
        "method": method,
        "search": used,
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(peak / 1024, 1),
        "search_rss_mb": round((peak - base_rss) / 1024, 1),
        "count": count,
        "kept": kept,
        "candidates": int(candidates),
        "pairs": int((n**2 - int((sizes**2).sum())) // 2),
    }


def run_one(n: int, method: str, max_bits: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "bench.audit_scale", "--one", str(n), method, str(max_bits)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def exponent(rows: list[dict]) -> float:
    """Slope of log(seconds) against log(N) over the sizes measured (nan with fewer than 2)."""
    if len(rows) < 2:
        return math.nan
    x = np.log([r["n"] for r in rows])
    y = np.log([max(r["seconds"], 1e-3) for r in rows])
    return float(np.polyfit(x, y, 1)[0])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 112_000, 377_000])
    p.add_argument("--exhaustive-max", type=int, default=50_000, help="largest N compared fully")
    p.add_argument("--alike-max", type=int, default=50_000, help="largest all-alike N")
    p.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    p.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(measure(int(args.one[0]), args.one[1], int(args.one[2]))))
        return 0
    from trainables.leakage import NEAR_DUPLICATE_BITS  # the audit's bound (imports torch)

    rows: list[dict] = []
    print("| N | method | search | seconds | peak RSS MB (search's own) | matches | kept | "
          "candidates | pairs |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for n in args.sizes:
        methods = ["index"]
        if n <= args.exhaustive_max:
            methods += ["exhaustive", "previous"]
        if n <= args.alike_max:
            methods.append("alike")
        for method in methods:
            r = run_one(n, method, NEAR_DUPLICATE_BITS)
            rows.append(r)
            print(
                f"| {n:,} | {method} | {r['search']} | {r['seconds']:.1f} | {r['peak_rss_mb']:.0f} "
                f"({r['search_rss_mb']:.0f}) "
                f"| {r['count']:,} | {r['kept']} | {r['candidates']:,} | {r['pairs']:,} |",
                flush=True,
            )
        counts = {r["count"] for r in rows if r["n"] == n and r["method"] != "alike"}
        if len(counts) != 1:
            print(f"N={n}: the methods disagree on the count: {counts}", file=sys.stderr)
            return 1
    for method in ("index", "exhaustive", "previous", "alike"):
        measured = [r for r in rows if r["method"] == method]
        if measured:
            print(f"growth exponent {method}: {exponent(measured):.2f} (time ~ N^k)")
    largest = max((r for r in rows if r["method"] == "index"), key=lambda r: r["n"])
    verdict = "meets" if largest["seconds"] <= GOAL_S else "misses"
    print(
        f"index at N={largest['n']:,}: {largest['seconds']:.1f} s, goal <= {GOAL_S:.0f} s at "
        f"377,000 ({verdict} it on this machine)"
    )
    if args.json:
        args.json.write_text(json.dumps({"command": sys.argv, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
