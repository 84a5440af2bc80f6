"""Two processes that map one dataset as trials do, and their memory (smaps_rollup)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

_MAP_CHILD = r"""
import json, sys, time
from pathlib import Path
import numpy as np
from trainables.config import TrialConfig
from trainables.data import load_dataset
from trainables.mapped import load_mapped

me, other, size, loader = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
roots = sys.argv[5:]

def load(root):
    if loader == "load_mapped":  # what a sweep's trial runs (search.trainable)
        return load_mapped(TrialConfig(data=root, image_size=size))
    return load_dataset(root, image_size=size)

def wait_for(flag):
    Path(f"{me}.{flag}").write_text("")
    while not Path(f"{other}.{flag}").exists():
        time.sleep(0.05)

def fields():
    out = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":")
        out[name] = int(value.split()[0]) * 1024  # kB -> bytes
    return out

out, keep = [], []
for n, root in enumerate(roots):
    ds = load(root)
    assert ds.decoded == 0, "the parent built the cache"
    keep.append(ds)  # a trial keeps its dataset mapped while it trains
    pixels = [np.asarray(s.images).reshape(-1) for s in (ds.train, ds.val)]
    touched = sum(int(p[::4096].astype(np.int64).sum()) for p in pixels)  # every page read
    wait_for(f"read{n}")  # both processes map and have read everything ...
    out.append({"fields": fields(), "touched": touched})
    wait_for(f"measured{n}")  # ... and keep it mapped until both have measured
Path(me + ".json").write_text(json.dumps(out))
"""


def two_trials_smaps(tmp_path: Path, roots: list[Path], size: int, loader: str) -> list[list[dict]]:
    """Two processes load each root in turn (warm, with `loader`: load_dataset or load_mapped)
    and read every page; after each, both processes' smaps_rollup while both hold the map."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    me = [str(tmp_path / f"trial{i}") for i in range(2)]
    args = [str(size), loader, *map(str, roots)]
    procs = [
        subprocess.Popen([sys.executable, "-c", _MAP_CHILD, me[i], me[1 - i], *args], env=env)
        for i in range(2)
    ]
    for p in procs:
        assert p.wait(timeout=300) == 0
    return [json.loads(Path(m + ".json").read_text()) for m in me]
