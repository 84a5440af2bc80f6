"""Goal 2: decoding happens once per machine and preprocessing setting, not once per trial.

N trials' data loads (default 16), each in its own process as Ray trial workers are, all started
at once against one fresh decode cache. Every process counts its own calls to `PIL.Image.open`
(independently of the library's own `Dataset.decoded`); the sum over all loads is compared with
the number of files. The seed's pipeline opens every file once per trial and epoch.

    python -m bench.decode_once --size small     # phantom:small, 8 processes at a time
    python -m bench.decode_once --size full      # phantom:full, 16 at once
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from bench.common import Results, note, parser, setup

PROFILES: dict[str, dict[str, Any]] = {
    "tiny": {"data": "phantom:small", "image_size": 32, "trials": 2, "processes": 2},
    # processes: loads running at the same time (each imports torch; 2 cores cannot run 16 well)
    "small": {"data": "phantom:small", "image_size": 64, "trials": 16, "processes": 8},
    "full": {"data": "phantom:full", "image_size": 256, "trials": 16, "processes": 16},
}
SEED_EPOCHS = 10  # epochs per trial in the seed-style comparison (TrialConfig's default)


def load_in_worker(data: str, image_size: int, cache: str, start_at: float) -> dict[str, Any]:
    """One trial's data load in a fresh process; counts every PIL.Image.open call it makes."""
    os.environ["CXR_TUNE_CACHE"] = cache
    import PIL.Image

    from trainables.data import load_dataset

    opened = {"n": 0}
    real_open = PIL.Image.open

    def counting_open(*args: Any, **kwargs: Any) -> Any:
        opened["n"] += 1
        return real_open(*args, **kwargs)

    PIL.Image.open = counting_open  # data.py calls Image.open through the module attribute
    delay = start_at - time.time()
    if delay > 0:  # all loads start together, so they race for the cache
        time.sleep(delay)
    started = time.perf_counter()
    dataset = load_dataset(data, image_size=image_size)
    return {
        "seconds": time.perf_counter() - started,
        "image_open_calls": opened["n"],
        "decoded": dataset.decoded,
        "images": len(dataset.train) + len(dataset.val),
        "pid": os.getpid(),
    }


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, help="data loads (trials) against the one cache")
    p.add_argument("--processes", type=int, help="loads running at the same time")
    args = p.parse_args(argv)
    device = setup(args)
    prof = PROFILES[args.size]
    trials = args.trials or prof["trials"]
    processes = min(args.processes or prof["processes"], trials)
    if trials < 1 or processes < 1:
        raise ValueError("--trials and --processes must be >= 1")
    results = Results("decode_once", args, device, argv)

    # The phantom is generated (or found) in the ordinary cache; only the decode cache is fresh.
    from trainables.layouts import resolve_root

    root = resolve_root(prof["data"])
    files = sum(1 for f in (root / "train").rglob("*") if f.is_file())
    cache = tempfile.mkdtemp(prefix="cxr-bench-decode-")
    note(
        f"{trials} loads of {root} ({files} train files, {prof['image_size']} px) in fresh "
        f"processes, {processes} at a time, against an empty decode cache {cache}"
    )
    try:
        started = time.perf_counter()
        context = multiprocessing.get_context("spawn")  # a clean process, as a Ray worker
        with ProcessPoolExecutor(processes, mp_context=context) as pool:
            start_at = time.time() + 5.0 + 0.5 * processes  # after every worker imported
            futures = [
                pool.submit(load_in_worker, str(root), prof["image_size"], cache, start_at)
                for _ in range(trials)
            ]
            loads = [f.result() for f in futures]
        wall = time.perf_counter() - started
    finally:
        shutil.rmtree(cache, ignore_errors=True)

    opened = sum(load["image_open_calls"] for load in loads)
    decoded = sum(load["decoded"] for load in loads)
    cold = [load["seconds"] for load in loads if load["decoded"]]
    warm = [load["seconds"] for load in loads if not load["decoded"]]
    results.figure("loads", loads)
    results.figure("files", files)
    results.figure("wall_seconds", wall)
    seed_opens = trials * SEED_EPOCHS * files
    note(
        f"PIL.Image.open calls over all {trials} loads: {opened}; Dataset.decoded summed: "
        f"{decoded}; loads that decoded: {len(cold)}; warm loads took "
        f"{min(warm, default=0):.2f} to {max(warm, default=0):.2f} s; wall {wall:.1f} s"
    )
    results.ratio(
        "image_opens_per_file",
        opened / files,
        "== 1.0",
        f"{opened} PIL opens for {files} files in {trials} loads ({len(cold)} load(s) decoded)",
    )
    results.ratio(
        "decoded_per_file",
        decoded / files,
        "== 1.0",
        "Dataset.decoded summed over the loads, per file",
    )
    results.ratio(
        "seed_opens_per_file",
        seed_opens / files,
        detail=f"the seed's pipeline: {trials} trials x {SEED_EPOCHS} epochs open every file",
    )
    results.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
