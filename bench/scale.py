"""The data plane at dataset scale: one decoded copy per node, measured against the image count.

    python -m bench.scale [--sizes 2000 8000 32000] [--image-size 64] [--json PATH]
    python -m bench.scale --sizes 10000 50000 112000 --sweep   # the issue's sizes (~10 min)

For each size N: N unique generated PNGs (noise plus a few shapes, 3 classes, 2 images per
patient) as an image folder and as the equivalent CSV manifest, then, each in a fresh process
(so its peak RSS is its own; the baseline after imports is subtracted):

- `listing`: `trainables.data.list_dataset` (no image opened);
- `cold` / `warm`: the pre-flight's load (`load_dataset`) with an empty, then a filled decode
  cache: seconds and the driver's peak RSS above its baseline, against the decoded bytes;
- `manifest_cold`: the same cold load from the CSV manifest;
- `trials`: two trial-like processes load the dataset warm as a sweep's trial does
  (`trainables.mapped.load_mapped`) and read every page; each one's `/proc/PID/smaps_rollup`
  (Private_Clean + Private_Dirty, Shared_Clean) while both hold the map, minus its own figures
  before the load: what a trial's private memory for data is;
- `epoch`: one epoch of `trainables.train.train_batches` (the feed alone, batch 64) with the split
  resident (the map indexed in place) and streamed (gathered one batch ahead by a thread);
- `sweep` (with `--sweep`): a real 2-trial sweep (`search.run`, `bench/spaces/scale_sweep.py`, two
  trials at once, warm cache) while every Ray trial worker's smaps_rollup is sampled: the peak
  anonymous (heap) and private memory of the trial processes, which hold torch and the model
  besides the data, so the figure to read is how it grows with N.

Goals (issue 19): a trial's private memory for data <= 5% of the dataset's bytes; the driver's
cold pre-flight peak <= 1.5x the dataset. Each figure's growth exponent is the slope of log(value)
against log(N). The machine is shared: absolute times vary, the exponents and ratios are the
result.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("NORMAL", "BACTERIA", "VIRAL")
TRIAL_PRIVATE_GOAL = 0.05  # of the dataset's bytes
DRIVER_PEAK_GOAL = 1.5  # x the dataset's bytes


def generate(root: Path, n: int, size: int, seed: int = 0) -> Path:
    """N unique PNGs under ROOT/folder/train/<CLASS>/ and ROOT/manifest.csv naming the same."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        cls = CLASSES[i % len(CLASSES)]
        pixels = rng.integers(0, 96, (size, size), dtype=np.uint8)
        img = Image.fromarray(pixels, mode="L")
        draw = ImageDraw.Draw(img)
        for _ in range(3):  # shapes make each image distinct beyond the noise
            x, y = rng.integers(0, size - 8, 2)
            w, h = rng.integers(4, size // 2, 2)
            draw.ellipse([int(x), int(y), int(x + w), int(y + h)], fill=int(rng.integers(96, 256)))
        rel = Path("train") / cls / f"person{i // 2}_{cls.lower()}_{i}.png"
        path = root / "folder" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, compress_level=1)
        rows.append(
            {"path": f"folder/{rel.as_posix()}", "label": cls, "patient_id": i // 2, "split": ""}
        )
    with open(root / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "label", "patient_id", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return root


# --- the measuring child (a fresh process per figure) ----------------------------------------

CHILD = r"""
import json, os, resource, sys, time
from pathlib import Path
import numpy as np
from trainables.config import TrialConfig
from trainables.data import list_dataset, load_dataset
from trainables.mapped import load_mapped

kind, data, size = sys.argv[1], sys.argv[2], int(sys.argv[3])

def rss():  # bytes now, peak
    status = Path("/proc/self/status").read_text().splitlines()
    now = next(int(l.split()[1]) for l in status if l.startswith("VmRSS:")) * 1024
    return now, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

def smaps():
    out = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":")
        out[name] = int(value.split()[0]) * 1024
    return out

base, _ = rss()
before = smaps()
started = time.perf_counter()
if kind == "listing":
    list_dataset(data)
    print(json.dumps({"seconds": time.perf_counter() - started}))
    sys.exit()
if kind == "trial":  # as a sweep's trial loads it (search.trainable)
    ds = load_mapped(TrialConfig(data=data, image_size=size))
else:
    ds = load_dataset(data, image_size=size)
seconds = time.perf_counter() - started
_, peak = rss()
out = {"seconds": seconds, "peak_above_base": peak - base, "decoded": ds.decoded,
       "images": len(ds.train) + len(ds.val)}
if kind == "trial":
    me, other = sys.argv[4], sys.argv[5]
    for s in (ds.train, ds.val):
        flat = np.asarray(s.images).reshape(-1)
        int(flat[::4096].astype(np.int64).sum())  # every page read, as an epoch does
    def wait(flag):
        Path(f"{me}.{flag}").write_text("")
        while not Path(f"{other}.{flag}").exists():
            time.sleep(0.05)
    wait("read")
    after = smaps()
    wait("measured")
    out["private"] = sum(after[k] - before[k] for k in ("Private_Clean", "Private_Dirty"))
    out["shared"] = after["Shared_Clean"] - before["Shared_Clean"]
if kind == "epoch":
    import torch
    from trainables.balance import epoch_indices
    from trainables.train import train_batches
    order = epoch_indices("original", ds.train.labels, torch.Generator().manual_seed(0))
    n = -(-len(order) // 64)
    cpu = torch.device("cpu")
    for stream in (False, True, False, True):  # twice each: the second of each is kept
        t = time.perf_counter()
        for x, y in train_batches(ds.train.images, ds.train.labels, order, 64, n, cpu, stream):
            x.float().mean()  # touch the batch as a step would
        out["streamed_s" if stream else "resident_s"] = time.perf_counter() - t
print(json.dumps(out))
"""


def child(kind: str, data: Path, size: int, cache: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "CXR_TUNE_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-c", CHILD, kind, str(data), str(size), *extra]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)


def result(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate(timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"measuring child failed (exit {proc.returncode})")
    return json.loads(out.strip().splitlines()[-1])


def measure(n: int, size: int, work: Path, sweep: bool = False) -> dict:
    root = work / f"n{n}"
    started = time.perf_counter()
    generate(root, n, size)
    figures: dict = {"n": n, "generate_s": time.perf_counter() - started}
    folder, manifest = root / "folder", root / "manifest.csv"
    cache, manifest_cache = root / "cache", root / "cache-manifest"
    figures["listing"] = result(child("listing", folder, size, cache))
    figures["cold"] = result(child("load", folder, size, cache))
    figures["warm"] = result(child("load", folder, size, cache))
    figures["manifest_cold"] = result(child("load", manifest, size, manifest_cache))
    flags = [str(root / f"trial{i}") for i in range(2)]
    procs = [child("trial", folder, size, cache, flags[i], flags[1 - i]) for i in range(2)]
    figures["trials"] = [result(p) for p in procs]
    figures["epoch"] = result(child("epoch", folder, size, cache))
    if sweep:
        figures["sweep"] = measure_sweep(folder, cache, root / "sweep")
    figures["dataset_bytes"] = figures["cold"]["images"] * size * size
    shutil.rmtree(root, ignore_errors=True)
    return figures


def measure_sweep(data: Path, cache: Path, storage: Path) -> dict:
    """A real 2-trial sweep on the warm cache, sampling every Ray trial worker's memory."""
    env = {**os.environ, "CXR_TUNE_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    env.setdefault("WANDB_MODE", "disabled")
    command = [
        sys.executable, "-m", "search.run", "--space", str(REPO / "bench/spaces/scale_sweep.py"),
        "--data", str(data), "--profile", "cpu", "--num-samples", "2", "--max-concurrent", "2",
        "--storage", str(storage), "--name", "scale", "--wandb-mode", "disabled", "--no-export",
    ]  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peaks: dict[int, dict[str, int]] = {}
    while proc.poll() is None:
        for pid, fields in trial_workers():
            peak = peaks.setdefault(pid, {})
            for key in ("Anonymous", "Private", "Shared_Clean"):
                peak[key] = max(peak.get(key, 0), fields[key])
        time.sleep(0.5)
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"the sweep failed (exit {proc.returncode}): {err[-2000:]}")
    if not peaks:
        raise RuntimeError("no Ray trial worker was seen during the sweep")
    return {"seconds": time.perf_counter() - started, "workers": list(peaks.values())}


def trial_workers() -> list[tuple[int, dict[str, int]]]:
    """(pid, smaps_rollup in bytes, Private = Private_Clean + Private_Dirty) of every process
    whose title is a Ray trial's (Tune names a function trainable's actor ImplicitFunc), not
    counting the short-lived child a trial forks to list its data (`trainables.mapped`), which
    inherits the title."""
    out = []
    for proc in Path("/proc").iterdir():
        try:
            if not _is_trial(proc) or _is_trial(Path("/proc") / _parent(proc)):
                continue
            fields = {}
            for line in (proc / "smaps_rollup").read_text().splitlines()[1:]:
                name, value = line.split(":")
                fields[name] = int(value.split()[0]) * 1024
        except (OSError, ValueError):
            continue  # not a number, gone meanwhile
        fields["Private"] = fields["Private_Clean"] + fields["Private_Dirty"]
        out.append((int(proc.name), fields))
    return out


def _is_trial(proc: Path) -> bool:
    return (proc / "cmdline").read_bytes().startswith(b"ray::ImplicitFunc")


def _parent(proc: Path) -> str:
    return (proc / "stat").read_text().rsplit(")", 1)[1].split()[1]


def exponent(ns: list[int], values: list[float]) -> float:
    """Slope of log(value) against log(N) (least squares)."""
    pairs = [(math.log(n), math.log(v)) for n, v in zip(ns, values, strict=True) if v > 0]
    if len(pairs) < 2:
        return float("nan")
    x, y = np.array(pairs).T
    return float(np.polyfit(x, y, 1)[0])


def report(rows: list[dict]) -> list[str]:
    ns = [r["n"] for r in rows]
    series = {
        "listing s": [r["listing"]["seconds"] for r in rows],
        "cold pre-flight s": [r["cold"]["seconds"] for r in rows],
        "cold pre-flight s (manifest)": [r["manifest_cold"]["seconds"] for r in rows],
        "warm pre-flight s": [r["warm"]["seconds"] for r in rows],
        "driver cold peak MB": [r["cold"]["peak_above_base"] / 1e6 for r in rows],
        "driver warm peak MB": [r["warm"]["peak_above_base"] / 1e6 for r in rows],
        "trial private MB (max of 2)": [max(t["private"] for t in r["trials"]) / 1e6 for r in rows],
        "trial shared MB (min of 2)": [min(t["shared"] for t in r["trials"]) / 1e6 for r in rows],
        "epoch feed s, resident": [r["epoch"]["resident_s"] for r in rows],
        "epoch feed s, streamed": [r["epoch"]["streamed_s"] for r in rows],
        "dataset MB": [r["dataset_bytes"] / 1e6 for r in rows],
    }
    if all("sweep" in r for r in rows):
        for key in ("Anonymous", "Private"):
            series[f"sweep trial worker {key.lower()} MB (max)"] = [
                max(w[key] for w in r["sweep"]["workers"]) / 1e6 for r in rows
            ]
    lines = ["| figure | " + " | ".join(f"N = {n:,}" for n in ns) + " | growth exponent |"]
    lines.append("|---" * (len(ns) + 2) + "|")
    for name, values in series.items():
        cells = " | ".join(f"{v:.3g}" for v in values)
        lines.append(f"| {name} | {cells} | {exponent(ns, values):.2f} |")
    lines.append("")
    lines.append("| goal | " + " | ".join(f"N = {n:,}" for n in ns) + " | goal |")
    lines.append("|---" * (len(ns) + 2) + "|")
    private = [max(t["private"] for t in r["trials"]) / r["dataset_bytes"] for r in rows]
    peak = [r["cold"]["peak_above_base"] / r["dataset_bytes"] for r in rows]
    speed = [r["epoch"]["streamed_s"] / r["epoch"]["resident_s"] for r in rows]
    lines.append(
        "| trial private / dataset | " + " | ".join(f"{v:.3f}" for v in private) + " | <= 0.05 |"
    )
    lines.append(
        "| driver cold peak / dataset | " + " | ".join(f"{v:.2f}" for v in peak) + " | <= 1.5 |"
    )
    lines.append("| streamed / resident epoch | " + " | ".join(f"{v:.2f}" for v in speed) + " | |")
    return lines


def main(argv: list[str] | None = None) -> int:
    from bench.common import parser as bench_parser

    p = bench_parser(__doc__.splitlines()[0], sizes=("small",), sizes_help="unused: see --sizes")
    p.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000, 32000], help="images")
    p.add_argument("--image-size", type=int, default=64, help="decoded side, pixels")
    p.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    p.add_argument("--sweep", action="store_true", help="also a real 2-trial sweep per size")
    args = p.parse_args(argv)
    if min(args.sizes) < 100 or args.image_size < 32:
        p.error("--sizes must be >= 100 images and --image-size >= 32 px")
    work = Path(tempfile.mkdtemp(prefix="cxr-scale-", dir=args.work))
    rows = []
    try:
        for n in sorted(args.sizes):
            rows.append(measure(n, args.image_size, work, args.sweep))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = report(rows)
    print("\n".join(table))
    if args.json:
        command = " ".join(["python -m bench.scale", *(argv if argv is not None else sys.argv[1:])])
        body = {"command": command, "image_size": args.image_size, "rows": rows, "table": table}
        args.json.write_text(json.dumps(body, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
